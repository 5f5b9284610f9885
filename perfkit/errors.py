"""The PerfkitError tree: every error perfkit reports to a user. Imports the stdlib only.

Exit codes follow perf_analyzer where `perfkit run` users expect them (0 ok, 2 unstable,
3 bad options, 99 anything else); `perfkit compare` adds 1 for a regression.

    PerfkitError (99)
    ├── ConfigError (3)            flags, sweep files, config.pbtxt, input data: says file/key/what to do
    ├── ModelError (3)             unknown model/version, shapes the model does not accept
    ├── ServerUnavailable (99)     names the URL and protocol, and the last error seen
    ├── ServerError (99)           the server answered, with an error (load failed, request failed)
    ├── MeasurementUnstable (2)    perf_analyzer's "Failed to obtain stable measurement ..."
    ├── RegressionDetected (1)     `perfkit compare` found a regression
    └── MissingDependency (99)     an optional extra is not installed; names the pip command
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_UNSTABLE = 2
EXIT_BAD_OPTIONS = 3
EXIT_OTHER = 99


class PerfkitError(Exception):
    """Base of every error perfkit shows to a user; the CLI maps it to `exit_code`."""

    exit_code: ClassVar[int] = EXIT_OTHER


class ConfigError(PerfkitError):
    """A flag, sweep file, config.pbtxt or input file is wrong. The message names where."""

    exit_code = EXIT_BAD_OPTIONS


class ModelError(PerfkitError):
    """The model, version, or a shape/datatype asked of it does not exist or is not accepted."""

    exit_code = EXIT_BAD_OPTIONS


class ServerUnavailable(PerfkitError):
    """No server answered at a URL within the bounded wait."""

    exit_code = EXIT_OTHER


class ServerError(PerfkitError):
    """The server answered with an error (model load failed, inference failed, ...)."""

    exit_code = EXIT_OTHER


class MeasurementUnstable(PerfkitError):
    """No stable measurement within --max-trials windows (perf_analyzer exit code 2)."""

    exit_code = EXIT_UNSTABLE


class RegressionDetected(PerfkitError):
    """`perfkit compare` found a metric past its threshold."""

    exit_code = EXIT_REGRESSION


class MissingDependency(PerfkitError):
    """An optional dependency is missing; the message names the extra to install."""

    exit_code = EXIT_OTHER
