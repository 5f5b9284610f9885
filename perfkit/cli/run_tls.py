"""`perfkit run`'s secured-endpoint flags, as perf_analyzer names them: `--ssl-https-*` (HTTPS, with
libcurl's verify semantics), `--ssl-grpc-*` (gRPC over TLS) and `-H "Name: value"` (repeatable:
every request of either protocol, control calls included; gRPC metadata names lowercased).

`tls_target` maps them onto `TargetSpec`'s `tls` and `headers`; a flag of the other protocol, a
TLS flag without -u (the embedded server is plain text) or a DER file is refused (exit 3).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import click

from perfkit.errors import ConfigError
from perfkit.load.spec import TlsSettings, parse_headers

_FILE = click.Path(exists=True, dir_okay=False)

_HTTPS = (
    "ssl_https_verify_peer",
    "ssl_https_verify_host",
    "ssl_https_ca_certificates_file",
    "ssl_https_client_certificate_file",
    "ssl_https_client_certificate_type",
    "ssl_https_private_key_file",
    "ssl_https_private_key_type",
)
_GRPC = (
    "ssl_grpc_use_ssl",
    "ssl_grpc_root_certifications_file",
    "ssl_grpc_private_key_file",
    "ssl_grpc_certificate_chain_file",
)

TLS_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "-H",
        "headers",
        multiple=True,
        metavar="'NAME: VALUE'",
        help="Header sent with every request (repeatable); gRPC metadata for -i grpc.",
    ),
    click.option("--ssl-grpc-use-ssl", is_flag=True, default=None, help="gRPC over TLS."),
    click.option(
        "--ssl-grpc-root-certifications-file", type=_FILE, help="PEM CAs to verify the server."
    ),
    click.option("--ssl-grpc-private-key-file", type=_FILE, help="PEM client private key."),
    click.option(
        "--ssl-grpc-certificate-chain-file", type=_FILE, help="PEM client certificate chain."
    ),
    click.option(
        "--ssl-https-verify-peer",
        type=click.IntRange(0, 1),
        help="1 (default): verify the server's certificate; 0: accept any.",
    ),
    click.option(
        "--ssl-https-verify-host",
        type=click.IntRange(0, 2),
        help="2 (default) or 1: the certificate must name the host; 0: any name.",
    ),
    click.option("--ssl-https-ca-certificates-file", type=_FILE, help="PEM CA bundle."),
    click.option("--ssl-https-client-certificate-file", type=_FILE, help="Client certificate."),
    click.option("--ssl-https-client-certificate-type", type=click.Choice(["PEM", "DER"])),
    click.option("--ssl-https-private-key-file", type=_FILE, help="Client private key."),
    click.option("--ssl-https-private-key-type", type=click.Choice(["PEM", "DER"])),
]


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def tls_target(o: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    """The TargetSpec fields `tls` and `headers` from the flags (`protocol`: "http" or "grpc")."""
    headers = parse_headers(o["headers"])
    url = str(o["url"] or "")
    mine, other = (_GRPC, _HTTPS) if protocol == "grpc" else (_HTTPS, _GRPC)
    stray = [_flag(k) for k in other if o[k] is not None]
    if stray:
        want = "--ssl-grpc-* with -i grpc" if protocol == "http" else "--ssl-https-* with -i http"
        raise ConfigError(
            f"{', '.join(stray)}: not for -i {protocol}; TLS options of a protocol go with it "
            f"({want})."
        )
    given = [_flag(k) for k in mine if o[k] is not None]
    if not given and not url.startswith("https://"):
        return {"tls": None, "headers": headers}
    if not url:
        raise ConfigError(
            f"{given[0]}: the server perfkit starts when -u is not given serves plain HTTP and "
            "gRPC; give -u with the URL of a server that serves TLS."
        )
    for key in ("ssl_https_client_certificate_type", "ssl_https_private_key_type"):
        if o.get(key) == "DER":
            raise ConfigError(
                f"{_flag(key)} DER: perfkit reads PEM only; convert the file, e.g. "
                "`openssl x509 -inform der -in cert.der -out cert.pem` (a key: "
                "`openssl pkey -inform der -in key.der -out key.pem`)."
            )
    if protocol == "grpc":
        if not o["ssl_grpc_use_ssl"] and not url.startswith("https://"):
            raise ConfigError(
                f"{', '.join(given)}: TLS files for gRPC need --ssl-grpc-use-ssl (or -u https://)."
            )
        tls = TlsSettings(
            ca_file=o["ssl_grpc_root_certifications_file"] or "",
            cert_file=o["ssl_grpc_certificate_chain_file"] or "",
            key_file=o["ssl_grpc_private_key_file"] or "",
        )
    else:
        peer, host = o["ssl_https_verify_peer"], o["ssl_https_verify_host"]
        tls = TlsSettings(
            verify_peer=1 if peer is None else peer,
            verify_host=2 if host is None else host,
            ca_file=o["ssl_https_ca_certificates_file"] or "",
            cert_file=o["ssl_https_client_certificate_file"] or "",
            key_file=o["ssl_https_private_key_file"] or "",
        )
    return {"tls": tls, "headers": headers}
