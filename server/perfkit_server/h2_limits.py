"""What one HTTP/2 (gRPC) connection may make the server hold or do, and RFC 9113's rules for a
peer's SETTINGS: the limits `grpc_wire` enforces as frames arrive, the token bucket that bounds a
peer's stream resets (CVE-2023-44487), and the SETTINGS frame checks. Pure; imports no transport.
"""

from __future__ import annotations

from dataclasses import dataclass

from perfkit.http2 import (
    MAX_WINDOW,
    SETTING,
    SETTINGS_ENABLE_PUSH,
    SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_FRAME_SIZE,
)

# HTTP/2 error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM = 0x5, 0x6, 0x7
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

MIN_MAX_FRAME = 1 << 14
MAX_MAX_FRAME = (1 << 24) - 1


class H2Error(Exception):
    """A connection error (RFC 9113 section 5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True, kw_only=True)
class H2Limits:
    """Per-connection bounds; each is checked as the frames that could pass it arrive.

    Attributes:
        max_message_bytes: largest gRPC message (its 5-byte prefix not counted).
        max_header_list_bytes: largest request header block, compressed as it arrives over
            HEADERS + CONTINUATION and decoded (advertised as SETTINGS_MAX_HEADER_LIST_SIZE).
        max_concurrent_streams: streams open at once (advertised); more are REFUSED_STREAM.
        reset_burst: stream resets by the peer taken at once before the rate below applies.
        reset_rate_per_s: resets per second after the burst; past it, GOAWAY ENHANCE_YOUR_CALM.
    """

    max_message_bytes: int = 256 * 1024 * 1024
    max_header_list_bytes: int = 16 * 1024
    max_concurrent_streams: int = 1024
    # nghttp2's defaults for its stream reset rate limit (the rapid-reset mitigation).
    reset_burst: int = 1000
    reset_rate_per_s: float = 33.0

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_header_list_bytes", "max_concurrent_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reset_burst < 1 or self.reset_rate_per_s <= 0:
            raise ValueError("the reset burst must be >= 1 and the reset rate > 0")


class ResetBudget:
    """A token bucket of the peer's stream resets: `reset_burst` tokens, refilled at
    `reset_rate_per_s`; `take` is False once a reset finds it empty."""

    __slots__ = ("_burst", "_rate", "_t", "_tokens")

    def __init__(self, limits: H2Limits, now: float) -> None:
        self._burst = float(limits.reset_burst)
        self._rate = limits.reset_rate_per_s
        self._tokens = self._burst
        self._t = now

    def take(self, now: float) -> bool:
        tokens = min(self._burst, self._tokens + (now - self._t) * self._rate)
        self._t = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


def parse_settings(flags_ack: bool, sid: int, payload: bytes) -> list[tuple[int, int]]:
    """A peer's SETTINGS frame as (identifier, value) pairs, after RFC 9113 section 6.5's checks;
    an ACK gives none. Raises H2Error for a frame or value the RFC calls a connection error."""
    if sid != 0:
        raise H2Error(PROTOCOL_ERROR, "SETTINGS on a stream")
    if flags_ack:
        if payload:
            raise H2Error(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        return []
    if len(payload) % 6:
        raise H2Error(FRAME_SIZE_ERROR, "SETTINGS length not a multiple of 6")
    pairs = [SETTING.unpack_from(payload, off) for off in range(0, len(payload), 6)]
    for key, value in pairs:
        if key == SETTINGS_ENABLE_PUSH and value > 1:
            raise H2Error(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH must be 0 or 1, got {value}")
        if key == SETTINGS_INITIAL_WINDOW_SIZE and value > MAX_WINDOW:
            raise H2Error(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} > 2^31-1")
        if key == SETTINGS_MAX_FRAME_SIZE and not MIN_MAX_FRAME <= value <= MAX_MAX_FRAME:
            raise H2Error(
                PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} outside [16384, 2^24-1]"
            )
    return pairs
