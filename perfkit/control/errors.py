"""The one mapping of tritonclient, grpc and socket errors to `perfkit.errors`. Imports no perfkit
module but `perfkit.errors`; tritonclient and aiohttp lazily."""

from __future__ import annotations

import functools

from perfkit.errors import PerfkitError, ServerError, ServerUnavailable

# grpc-core's own words for "no connection" (a server's UNAVAILABLE reply carries its message).
_NO_CONNECTION = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "socket closed",
    "connection reset",
    "broken pipe",
    "dns resolution failed",
    "end of tcp stream",
    "deadline exceeded",
)


@functools.cache
def client_errors() -> tuple[type[BaseException], ...]:
    """What tritonclient's clients raise: their own exception (gRPC status errors are wrapped in
    it), socket errors (timeouts included), HTTP parse errors (geventhttpclient) and aiohttp's."""
    import http.client

    import aiohttp
    from tritonclient.utils import InferenceServerException

    return (InferenceServerException, OSError, http.client.HTTPException, aiohttp.ClientError)


def error_text(exc: BaseException) -> str:
    """The server's (or the socket's) message of `exc` on one line."""
    message = getattr(exc, "message", None)
    text = " ".join(str(message() if callable(message) else exc).split())
    return text or type(exc).__name__


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means "no server answered" rather than "the server answered no"."""
    if isinstance(exc, OSError):
        return True
    status = getattr(exc, "status", None)
    code = str(status() if callable(status) else status or "")
    if code in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"):
        text = error_text(exc).lower()
        return any(s in text for s in _NO_CONNECTION)
    return False


def map_error(
    exc: BaseException,
    what: str,
    *,
    url: str,
    protocol: str,
    kind: type[PerfkitError] = ServerError,
) -> PerfkitError:
    """`exc` from a tritonclient call as a perfkit error: ServerUnavailable when nothing answered,
    else `kind` (ModelError for calls about a model, ServerError for the rest) with the server's
    message. `what` says what was asked ("model metadata of 'm'")."""
    text = error_text(exc)
    if is_unavailable(exc):
        return ServerUnavailable(f"{what}: no answer from {url} ({protocol}): {text}")
    return kind(f"{what}: {text}")
