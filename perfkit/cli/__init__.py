"""The perfkit CLI: the composition root. Each subcommand lives in its own module of this package.

Errors: every `PerfkitError` is caught once, in `main`, printed as `Error: ...` and mapped to its
exit code. Anything else is a bug: it is printed with its traceback and exits 99.
"""

from __future__ import annotations

import logging
import os
import sys

# grpc's C core logs a failed TLS handshake at INFO on stderr before perfkit reports it (once, as
# an error line): its own default level, set before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import click
from rich.markup import escape

from perfkit import __version__, interrupts
from perfkit.cli import _console
from perfkit.errors import EXIT_OTHER, ConfigError, PerfkitError
from perfkit.model_repo import ModelRepoError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="perfkit")
@click.option(
    "--log-level",
    default="warning",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Logging verbosity.",
)
def cli(log_level: str) -> None:
    """Measure and tune models on Triton-compatible inference servers."""
    _console.configure_logging(log_level)


def _register() -> None:
    # Imported here so that `perfkit --help` stays fast and a broken subcommand names itself.
    from perfkit.cli import models, report, run, serve, tune

    for module in (run, tune, report, serve, models):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point: runs the click group and maps errors to exit codes."""
    interrupts.install()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _console.err.print("Aborted.")
        sys.exit(130)
    except click.ClickException as exc:
        # Bad flags: perf_analyzer's "option error" exit code.
        exc.show()
        sys.exit(3 if isinstance(exc, click.UsageError) else exc.exit_code)
    except PerfkitError as exc:
        _console.err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(exc.exit_code)
    except ModelRepoError as exc:
        # The pure config.pbtxt/repository modules raise their own error; to a user it is a ConfigError.
        _console.err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(ConfigError.exit_code)
    except KeyboardInterrupt:
        _console.err.print("Interrupted.")
        sys.exit(130)
    except Exception:  # the CLI boundary: a bug, shown with its traceback
        logging.getLogger("perfkit").exception("internal error")
        sys.exit(EXIT_OTHER)
