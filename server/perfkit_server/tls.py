"""TLS for the HTTP and gRPC listeners, with tritonserver's flag names (`--grpc-use-ssl`,
`--grpc-use-ssl-mutual`, `--grpc-server-cert`, `--grpc-server-key`, `--grpc-root-cert`) and the same
family for HTTPS, which tritonserver lacks (`--http-use-ssl`, ...). Stdlib only.

The wire protocols run unchanged over asyncio's SSL transport: they use only `write`,
`writelines`, `pause_reading` / `resume_reading`, `is_closing` and `close`, which it provides, and
see plaintext in `data_received`. gRPC's listener offers ALPN "h2" (gRPC clients require it),
HTTP's "http/1.1".
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Service = Literal["grpc", "http"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTls:
    """One listener's TLS: its certificate and key, and with `mutual` the CA (`root_cert`)
    that must have signed each client's certificate (a client without one is refused)."""

    service: Service
    server_cert: Path
    server_key: Path
    root_cert: Path | None = None
    mutual: bool = False

    def __post_init__(self) -> None:
        flag = f"--{self.service}"
        if self.mutual and self.root_cert is None:
            raise ValueError(
                f"{flag}-use-ssl-mutual needs {flag}-root-cert: the CA that signs the client "
                "certificates"
            )
        if self.root_cert is not None and not self.mutual:
            raise ValueError(
                f"{flag}-root-cert is only used with {flag}-use-ssl-mutual=true (to verify "
                "client certificates); give both or neither"
            )
        for name, path in (
            ("server-cert", self.server_cert),
            ("server-key", self.server_key),
            ("root-cert", self.root_cert),
        ):
            if path is not None and not path.is_file():
                raise ValueError(f"{flag}-{name} {path}: no such file")

    def context(self) -> ssl.SSLContext:
        """The listener's context; OSError naming the flag when a file does not load."""
        flag = f"--{self.service}"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.server_cert, self.server_key)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"{flag}-server-cert {self.server_cert} / {flag}-server-key {self.server_key}: "
                f"cannot load them ({exc})"
            ) from exc
        if self.mutual:
            ctx.verify_mode = ssl.CERT_REQUIRED
            try:
                ctx.load_verify_locations(cafile=self.root_cert)
            except (OSError, ValueError) as exc:
                raise OSError(f"{flag}-root-cert {self.root_cert}: cannot load it ({exc})") from exc
        ctx.set_alpn_protocols(["h2"] if self.service == "grpc" else ["http/1.1"])
        return ctx

    def describe(self) -> str:
        """For the start-up log: 'TLS' or 'mutual TLS (client certificates required)'."""
        return "mutual TLS (client certificates required)" if self.mutual else "TLS"


def from_flags(
    service: Service,
    *,
    use_ssl: bool,
    mutual: bool,
    server_cert: Path | None,
    server_key: Path | None,
    root_cert: Path | None,
) -> ServerTls | None:
    """A listener's `ServerTls` from its flags, or None for plain text. As tritonserver,
    `--*-use-ssl-mutual` implies `--*-use-ssl`. File flags without TLS on are refused (they would
    be ignored)."""
    flag = f"--{service}"
    if not (use_ssl or mutual):
        given = [
            f"{flag}-{name}"
            for name, path in (
                ("server-cert", server_cert),
                ("server-key", server_key),
                ("root-cert", root_cert),
            )
            if path is not None
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given but {flag}-use-ssl is not true")
        return None
    if server_cert is None or server_key is None:
        raise ValueError(f"{flag}-use-ssl needs {flag}-server-cert and {flag}-server-key")
    return ServerTls(
        service=service,
        server_cert=server_cert,
        server_key=server_key,
        root_cert=root_cert,
        mutual=mutual,
    )
