"""TLS and mutual TLS for the HTTP and gRPC servers.

:class:`TlsOptions` holds one server's flags (Triton's ``--grpc-use-ssl`` family, and the same names under
``--http-``). :func:`load_tls` checks them before any model loads — every file read and parsed, the key matched to
its certificate — and returns the material both servers use: an ``ssl.SSLContext`` for uvicorn and
``grpc.ssl_server_credentials`` for gRPC. A mistake is a :class:`TlsError` naming the flag and the file.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc

from kiln.errors import InvalidArgumentError

_CERTIFICATE_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"


class TlsError(InvalidArgumentError):
    """A TLS flag that cannot be honoured: a missing file, a key that does not match its certificate, ..."""


@dataclass(frozen=True)
class TlsOptions:
    """One server's TLS flags; the defaults mean plain text.

    ``use_ssl`` serves TLS with ``server_cert`` (PEM, the chain may follow the leaf) and ``server_key`` (PEM,
    unencrypted). ``use_ssl_mutual`` implies ``use_ssl`` and also requires a client certificate that chains to
    ``root_cert``; ``root_cert`` has no other use, so it is refused without ``use_ssl_mutual``.
    """

    use_ssl: bool = False
    server_cert: Path | None = None
    server_key: Path | None = None
    root_cert: Path | None = None
    use_ssl_mutual: bool = False

    @property
    def enabled(self) -> bool:
        return self.use_ssl or self.use_ssl_mutual


@dataclass(frozen=True)
class ServerTls:
    """One server's checked TLS material, read once at startup."""

    certificate_chain: bytes
    private_key: bytes
    root_certificates: bytes | None  # the CA for client certificates: set exactly when they are required
    context: ssl.SSLContext  # the server side of the same material, for uvicorn

    @property
    def mutual(self) -> bool:
        return self.root_certificates is not None

    def describe(self) -> str:
        return "TLS, client certificates required" if self.mutual else "TLS"

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.mutual,
        )


@dataclass(frozen=True)
class _Flags:
    """One transport's flag names, for messages."""

    server: str  # "gRPC" or "HTTP"
    use_ssl: str
    server_cert: str
    server_key: str
    root_cert: str
    use_ssl_mutual: str

    @classmethod
    def of(cls, transport: str) -> _Flags:
        names = ("use-ssl", "server-cert", "server-key", "root-cert", "use-ssl-mutual")
        server = "gRPC" if transport == "grpc" else transport.upper()
        return cls(server, *(f"--{transport}-{name}" for name in names))


def load_tls(options: TlsOptions, transport: str) -> ServerTls | None:
    """Check ``options`` (the flags of ``transport``: "grpc" or "http") and read their files; None when TLS is
    off. Raises :class:`TlsError` for any flag that cannot be honoured."""
    flags = _Flags.of(transport)
    _check_combination(options, flags)
    if not options.enabled:
        return None
    assert options.server_cert is not None and options.server_key is not None  # _check_combination
    certificate_chain = _read(options.server_cert, flags.server_cert, _CERTIFICATE_MARKER, "certificate")
    _parse_certificates(certificate_chain, options.server_cert, flags.server_cert)
    private_key = _read(options.server_key, flags.server_key, _KEY_MARKER, "private key")
    context = _server_context(options.server_cert, options.server_key, flags)
    root_certificates = None
    if options.use_ssl_mutual:
        assert options.root_cert is not None
        root_certificates = _read(options.root_cert, flags.root_cert, _CERTIFICATE_MARKER, "certificate")
        _parse_certificates(root_certificates, options.root_cert, flags.root_cert)
        context.load_verify_locations(cadata=root_certificates.decode("ascii", errors="replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return ServerTls(certificate_chain, private_key, root_certificates, context)


def _check_combination(options: TlsOptions, flags: _Flags) -> None:
    """Flags that only make sense together: nothing given is silently ignored."""
    files = (
        (flags.server_cert, options.server_cert),
        (flags.server_key, options.server_key),
        (flags.root_cert, options.root_cert),
    )
    if not options.enabled:
        given = [flag for flag, path in files if path is not None]
        if given:
            raise TlsError(
                f"{', '.join(given)} given without {flags.use_ssl}: TLS is off for {flags.server}; add "
                f"{flags.use_ssl} (or {flags.use_ssl_mutual}) or drop {'them' if len(given) > 1 else 'it'}"
            )
        return
    switch = flags.use_ssl_mutual if options.use_ssl_mutual else flags.use_ssl
    missing = [flag for flag, path in files[:2] if path is None]
    if missing:
        raise TlsError(f"{switch} needs {' and '.join(missing)} (the server's certificate and its key, PEM)")
    if options.use_ssl_mutual and options.root_cert is None:
        raise TlsError(
            f"{flags.use_ssl_mutual} needs {flags.root_cert}: the CA that client certificates chain to"
        )
    if not options.use_ssl_mutual and options.root_cert is not None:
        raise TlsError(
            f"{flags.root_cert} only verifies client certificates: add {flags.use_ssl_mutual} to require them, "
            f"or drop {flags.root_cert}"
        )


def _read(path: Path, flag: str, marker: bytes, what: str) -> bytes:
    if not path.is_file():
        _fail(flag, path, "no such file" if not path.exists() else "not a file")
    try:
        data = path.read_bytes()
    except OSError as e:
        _fail(flag, path, f"cannot read it: {e.strerror}")
    if marker not in data:
        _fail(flag, path, f"not a PEM {what} (no '{marker.decode()}' line)")
    return data


def _parse_certificates(data: bytes, path: Path, flag: str) -> None:
    """Every PEM certificate in ``data`` must parse (a throwaway trust store parses them)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as e:
        _fail(flag, path, f"not a valid PEM certificate: {_reason(e)}")


def _server_context(cert: Path, key: Path, flags: _Flags) -> ssl.SSLContext:
    def no_passphrase() -> NoReturn:
        _fail(flags.server_key, key, "the key is encrypted with a passphrase; Kiln needs an unencrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(
                f"{flags.server_key} {key} does not match the certificate in {flags.server_cert} {cert}"
            ) from None
        _fail(flags.server_key, key, f"cannot be used with {flags.server_cert} {cert}: {_reason(e)}")
    return context


def _reason(e: Exception) -> str:
    return str(getattr(e, "reason", None) or e)


def _fail(flag: str, path: Path, why: str) -> NoReturn:
    raise TlsError(f"{flag} {path}: {why}") from None
