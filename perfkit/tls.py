"""A client's TLS settings and request headers (perf_analyzer's `--ssl-*` and `-H`), the ssl
contexts they make, and what a TLS failure looks like. Imports only `perfkit.errors` and the stdlib.

One `TlsSettings` serves both protocols: the CLI maps `--ssl-https-*` (HTTP) or `--ssl-grpc-*`
(gRPC) onto it, so the load generator's transports and the control client read the same fields.
`verify_peer` / `verify_host` follow libcurl's CURLOPT_SSL_VERIFYPEER / VERIFYHOST, as
perf_analyzer's HTTPS flags do; gRPC always verifies both (grpc has no switch to turn them off).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from perfkit.errors import ConfigError

# A request header: (name, value); gRPC sends it as metadata with the name lowercased.
Header = tuple[str, str]

# RFC 9110 token characters: what a header name may hold.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Headers the transports write themselves (HTTP/1.1 framing, HTTP/2 pseudo-headers and gRPC's
# own): a -H with one of these would make a malformed or ambiguous request.
_RESERVED = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "te",
     "inference-header-content-length", "grpc-encoding", "grpc-accept-encoding", "grpc-timeout",
     "upgrade", "keep-alive", "expect"}
)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How to reach a server over TLS. Files are PEM; "" means not given.

    Args:
        verify_peer: 1 checks the server's certificate chain against `ca_file` (or the system's
            CAs); 0 accepts any certificate (and then no name is checked either).
        verify_host: 0 accepts a certificate for any name; 1 or 2 require the URL's host among
            its names (libcurl treats 1 as 2 since 7.66, and so does perfkit).
        ca_file: CA bundle to verify the server with (--ssl-https-ca-certificates-file,
            --ssl-grpc-root-certifications-file).
        cert_file: client certificate (chain) for mutual TLS (--ssl-https-client-certificate-file,
            --ssl-grpc-certificate-chain-file).
        key_file: the client certificate's private key (--ssl-https-private-key-file,
            --ssl-grpc-private-key-file); "" when it is in `cert_file`.
    """

    verify_peer: int = 1
    verify_host: int = 2
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if self.verify_peer not in (0, 1):
            raise ConfigError(f"--ssl-https-verify-peer: {self.verify_peer} is not 0 or 1.")
        if self.verify_host not in (0, 1, 2):
            raise ConfigError(f"--ssl-https-verify-host: {self.verify_host} is not 0, 1 or 2.")
        if self.key_file and not self.cert_file:
            raise ConfigError(
                "a client private key was given without its certificate: give the certificate "
                "too (--ssl-https-client-certificate-file / --ssl-grpc-certificate-chain-file)."
            )

    def context(
        self, *, alpn: Iterable[str] = (), cls: type[ssl.SSLContext] = ssl.SSLContext
    ) -> ssl.SSLContext:
        """A client context for these settings (`cls`: e.g. gevent's SSLContext for
        tritonclient's sync HTTP client). ConfigError names a file that cannot be loaded."""
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.verify_peer:
            try:
                if self.ca_file:
                    ctx.load_verify_locations(cafile=self.ca_file)
                else:
                    ctx.load_default_certs()
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot load the CA certificates {self.ca_file}: {_reason(exc)}"
                ) from exc
            ctx.check_hostname = self.verify_host != 0
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file or None)
            except (OSError, ValueError) as exc:
                key = f" with the key {self.key_file}" if self.key_file else ""
                raise ConfigError(
                    f"cannot load the client certificate {self.cert_file}{key}: {_reason(exc)}"
                ) from exc
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx

    def sync_http_options(self) -> dict[str, Any]:
        """tritonclient.http.InferenceServerClient's TLS keywords (geventhttpclient): our own
        context, built by a factory that ignores the default CA bundle it is handed."""
        import gevent.ssl  # type: ignore[import-untyped]

        def factory(*_args: Any, **_kw: Any) -> ssl.SSLContext:
            return self.context(cls=gevent.ssl.SSLContext)

        # `insecure` keeps geventhttpclient from turning the name check (back) on.
        return {
            "ssl": True,
            "ssl_context_factory": factory,
            "insecure": not (self.verify_peer and self.verify_host),
        }

    def grpc_options(self) -> dict[str, Any]:
        """tritonclient.grpc's TLS keywords (files; it reads them itself)."""
        return {
            "ssl": True,
            "root_certificates": self.ca_file or None,
            "private_key": self.key_file or None,
            "certificate_chain": self.cert_file or None,
        }

    def grpc_credentials(self) -> Any:
        """grpc channel credentials (for the grpcio transport)."""
        import grpc

        def read(path: str) -> bytes | None:
            if not path:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {_reason(exc)}") from exc

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split()) or type(exc).__name__


def parse_header(text: str, *, flag: str = "-H") -> Header:
    """perf_analyzer's `-H "Name: value"` -> (name, value): the name before the first ':', the
    value after it with surrounding blanks stripped. ConfigError for anything malformed."""
    name, sep, value = text.partition(":")
    value = value.strip(" \t")
    if not sep or not name:
        raise ConfigError(f"{flag} {text!r} is not 'Name: value' (e.g. {flag} 'X-Api-Key: abc').")
    if not set(name) <= _TOKEN:
        raise ConfigError(
            f"{flag} {text!r}: the name {name!r} may hold only letters, digits and !#$%&'*+-.^_`|~ "
            "(no spaces)."
        )
    if not (value.isascii() and value.isprintable()):
        raise ConfigError(
            f"{flag} {text!r}: the value may hold only printable ASCII (no control characters)."
        )
    if name.lower() in _RESERVED:
        raise ConfigError(
            f"{flag} {text!r}: perfkit writes {name} itself; it cannot be set with {flag}."
        )
    return name, value


def parse_headers(values: Iterable[str], *, flag: str = "-H") -> tuple[Header, ...]:
    """Every `-H` value parsed (`parse_header`), in order."""
    return tuple(parse_header(v, flag=flag) for v in values)


def grpc_metadata(headers: Iterable[Header]) -> tuple[Header, ...]:
    """Headers as gRPC metadata: names lowercased (HTTP/2 and grpc require it)."""
    return tuple((name.lower(), value) for name, value in headers)


def is_tls_failure(exc: BaseException) -> bool:
    """Did a connection fail in TLS (a certificate not trusted, a name that does not match, a
    client certificate refused) rather than for want of a server? Such a failure does not go
    away by waiting."""
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
    message = getattr(exc, "message", None)  # tritonclient's exception keeps its text there
    text = f"{exc} {message() if callable(message) else ''}".lower()
    return any(
        s in text
        for s in (
            "certificate_verify_failed",
            "certificate verify failed",
            "ssl handshake failed",
            "handshake failed",
            "tlsv13_alert_certificate_required",
            "alert certificate required",
            "wrong_version_number",
        )
    )


def is_peer_close(text: str) -> bool:
    """Does an error's text say the peer closed the connection (over TLS: right after the
    handshake, as a server that requires a client certificate does to a client without one)?"""
    low = text.lower()
    return any(
        s in low
        for s in (
            "connection closed",
            "socket closed",
            "connection reset",
            "eof occurred",
            "unexpected eof",
        )
    )


SCHEMES = ("http", "https", "grpc")


def check_scheme(url: str) -> None:
    """ConfigError for a URL whose scheme perfkit does not speak (grpcs://, ftp://, ...): refused
    with what to write instead, never dropped."""
    scheme, sep, _ = url.partition("://")
    if sep and scheme not in SCHEMES:  # case-sensitive, as every use of the scheme
        raise ConfigError(
            f"url: {url!r}: perfkit does not speak {scheme}://. Write host:port (plain text), "
            "https://host:port for TLS (with -i grpc: gRPC over TLS, as --ssl-grpc-use-ssl), "
            "or http://host:port."
        )
