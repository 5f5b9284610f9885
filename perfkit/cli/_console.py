"""The CLI's Rich consoles (stdout and stderr) and logging setup. Only the CLI prints."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

# soft_wrap: an error message or a path must stay on one line when piped (Rich would wrap at 80).
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, rich_tracebacks=True)],
        force=True,
    )
