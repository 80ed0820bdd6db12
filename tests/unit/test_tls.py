"""kiln.tls: every flag combination and file problem is a TlsError naming the flag and the file; good material
becomes a server context that really completes (or refuses) handshakes, and gRPC credentials."""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import ssl
import subprocess
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from kiln.cli import serve as serve_cli
from kiln.server import ServerOptions, serve
from kiln.tls import TlsError, TlsOptions, load_tls
from servers import Certificates, free_port, make_certificates

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _server(certs: Certificates, mutual: bool = False) -> TlsOptions:
    return TlsOptions(
        use_ssl=not mutual,
        server_cert=certs.server_cert,
        server_key=certs.server_key,
        root_cert=certs.ca if mutual else None,
        use_ssl_mutual=mutual,
    )


def _client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """A TLS handshake between the two contexts in memory; raises the SSLError of the side that refuses."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    sides = [
        client.wrap_bio(client_in, client_out, server_hostname="localhost"),
        server.wrap_bio(server_in, server_out, server_side=True),
    ]
    done = [False, False]
    for _ in range(10):
        for i, side in enumerate(sides):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done):
            return
    raise AssertionError("the handshake did not finish")


def test_off_by_default() -> None:
    assert not TlsOptions().enabled
    assert load_tls(TlsOptions(), "grpc") is None


@pytest.mark.parametrize("field", ["server_cert", "server_key", "root_cert"])
def test_a_file_without_use_ssl_is_refused(tmp_path: Path, field: str) -> None:
    flag = "--grpc-" + field.replace("_", "-")
    with pytest.raises(TlsError, match=f"^{flag} given without --grpc-use-ssl: TLS is off for gRPC"):
        load_tls(replace(TlsOptions(), **{field: tmp_path / "x.pem"}), "grpc")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (TlsOptions(use_ssl=True), "--http-use-ssl needs --http-server-cert and --http-server-key"),
        (TlsOptions(use_ssl=True, server_cert=Path("c.pem")), "--http-use-ssl needs --http-server-key"),
        (
            TlsOptions(use_ssl_mutual=True, server_key=Path("k.pem")),
            "--http-use-ssl-mutual needs --http-server-cert",
        ),
        (
            TlsOptions(use_ssl_mutual=True, server_cert=Path("c.pem"), server_key=Path("k.pem")),
            "--http-use-ssl-mutual needs --http-root-cert",
        ),
        (
            TlsOptions(
                use_ssl=True, server_cert=Path("c.pem"), server_key=Path("k.pem"), root_cert=Path("r")
            ),
            "--http-root-cert only verifies client certificates: add --http-use-ssl-mutual",
        ),
    ],
)
def test_flags_that_need_each_other(options: TlsOptions, message: str) -> None:
    with pytest.raises(TlsError, match=f"^{message}"):
        load_tls(options, "http")


def test_missing_and_unreadable_files_are_named(tmp_path: Path) -> None:
    options = TlsOptions(use_ssl=True, server_cert=tmp_path / "nope.pem", server_key=tmp_path / "k.pem")
    with pytest.raises(
        TlsError, match=f"^--grpc-server-cert {re.escape(str(tmp_path / 'nope.pem'))}: no such file$"
    ):
        load_tls(options, "grpc")
    with pytest.raises(TlsError, match=f"^--grpc-server-cert {re.escape(str(tmp_path))}: not a file$"):
        load_tls(replace(options, server_cert=tmp_path), "grpc")


def test_files_that_are_not_pem(tmp_path: Path, certs: Certificates) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    options = _server(certs)
    with pytest.raises(TlsError, match=r"^--grpc-server-cert .*junk.pem: not a PEM certificate"):
        load_tls(replace(options, server_cert=junk), "grpc")
    with pytest.raises(TlsError, match=r"^--grpc-server-cert .*server.key: not a PEM certificate"):
        load_tls(replace(options, server_cert=certs.server_key), "grpc")
    with pytest.raises(TlsError, match=r"^--grpc-server-key .*server.pem: not a PEM private key"):
        load_tls(replace(options, server_key=certs.server_cert), "grpc")
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsError, match=r"^--grpc-server-cert .*junk.pem: not a valid PEM certificate"):
        load_tls(replace(options, server_cert=junk), "grpc")
    with pytest.raises(TlsError, match=r"^--grpc-root-cert .*junk.pem: not a valid PEM certificate"):
        load_tls(replace(_server(certs, mutual=True), root_cert=junk), "grpc")


def test_a_key_that_does_not_match_the_certificate(certs: Certificates) -> None:
    with pytest.raises(TlsError, match=r"^--http-server-key .*client.key does not match the certificate in "):
        load_tls(replace(_server(certs), server_key=certs.client_key), "http")


@needs_openssl
def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path, certs: Certificates) -> None:
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", certs.server_key, "-aes256", "-passout", "pass:secret", "-out", encrypted],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with pytest.raises(TlsError, match=r"^--grpc-server-key .*encrypted.key: the key is encrypted"):
        load_tls(replace(_server(certs), server_key=encrypted), "grpc")


def test_server_tls_handshakes_with_trusting_clients(certs: Certificates) -> None:
    tls = load_tls(_server(certs), "http")
    assert tls is not None and not tls.mutual and tls.describe() == "TLS"
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert tls.certificate_chain == certs.server_cert.read_bytes()
    assert isinstance(tls.grpc_credentials(), grpc.ServerCredentials)
    _handshake(tls.context, _client(certs.ca))
    with pytest.raises(ssl.SSLCertVerificationError):  # a client that trusts another CA refuses the server
        _handshake(tls.context, _client(certs.other_ca))


def test_mutual_tls_requires_a_client_certificate_from_the_root(certs: Certificates) -> None:
    tls = load_tls(_server(certs, mutual=True), "grpc")
    assert tls is not None and tls.mutual and tls.describe() == "TLS, client certificates required"
    assert tls.root_certificates == certs.ca.read_bytes()
    assert tls.context.verify_mode is ssl.CERT_REQUIRED
    _handshake(tls.context, _client(certs.ca, certs.client_cert, certs.client_key))
    with pytest.raises(ssl.SSLError):
        _handshake(tls.context, _client(certs.ca))
    with pytest.raises(ssl.SSLError):
        _handshake(tls.context, _client(certs.ca, certs.other_client_cert, certs.other_client_key))


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_cli_flags_become_tls_options() -> None:
    args = _parse(
        "--grpc-use-ssl-mutual", "--grpc-server-cert", "c.pem", "--grpc-server-key", "k.pem",
        "--grpc-root-cert", "ca.pem", "--http-use-ssl=true", "--http-server-cert", "h.pem",
        "--http-server-key", "hk.pem",
    )  # fmt: skip
    assert serve_cli.tls_options(args, "grpc") == TlsOptions(
        False, Path("c.pem"), Path("k.pem"), Path("ca.pem"), use_ssl_mutual=True
    )
    assert serve_cli.tls_options(args, "http") == TlsOptions(True, Path("h.pem"), Path("hk.pem"))
    # Triton's empty defaults mean "not given", so a template can always pass the flags
    empty = _parse("--grpc-use-ssl", "false", "--grpc-server-cert", "", "--grpc-root-cert=")
    assert serve_cli.tls_options(empty, "grpc") == TlsOptions()
    assert serve_cli.tls_options(_parse(), "http") == TlsOptions()


def test_serve_refuses_bad_tls_before_binding_or_loading(tmp_path: Path) -> None:
    port = free_port()
    options = ServerOptions(
        model_repositories=[tmp_path],
        http_port=port,
        grpc_tls=TlsOptions(server_cert=tmp_path / "c.pem"),
    )
    with pytest.raises(TlsError, match=r"^--grpc-server-cert given without --grpc-use-ssl"):
        asyncio.run(serve(options))
