"""TLS and mutual TLS on real ``kiln serve`` processes, through tritonclient's own TLS options (http with
geventhttpclient, http.aio with aiohttp, grpc and grpc.aio), with certificates made for the test run."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import signal
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from kiln.examples import models, write_model
from servers import Certificates, KilnProcess, make_certificates

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
    pytest.mark.timeout(90),
    # tritonclient's ssl_options go through gevent's ssl.wrap_socket, which Python 3.11 calls deprecated
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:ssl.match_hostname:DeprecationWarning"),
]
TIMEOUT_S = 10  # every client call is bounded: a refused handshake must fail, never hang
# what a refused TLS connection looks like to each client: a closed connection or a TLS error
HTTP_REFUSED = (OSError, http.client.HTTPException, aiohttp.ClientError)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    write_model(path, "add_sub", models.add_sub(["batch", 4]), None)
    return path


def _tls_flags(certs: Certificates, mutual: bool) -> list[str]:
    flags: list[str] = []
    for transport in ("grpc", "http"):
        flags += [f"--{transport}-use-ssl-mutual" if mutual else f"--{transport}-use-ssl"]
        flags += [f"--{transport}-server-cert", str(certs.server_cert)]
        flags += [f"--{transport}-server-key", str(certs.server_key)]
        if mutual:
            flags += [f"--{transport}-root-cert", str(certs.ca)]
    return flags


Pair = tuple[Path, Path]  # a client certificate and its key


def _context(certs: Certificates, client: Pair | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client is not None:
        context.load_cert_chain(*client)
    return context


def _good(certs: Certificates) -> Pair:
    return certs.client_cert, certs.client_key


def _start(repo: Path, certs: Certificates, mutual: bool, log_dir: Path) -> KilnProcess:
    flags = _tls_flags(certs, mutual)
    return KilnProcess(
        [repo], *flags, log_dir=log_dir, http_ssl_context=_context(certs, _good(certs) if mutual else None)
    ).start()


@pytest.fixture(scope="module")
def tls_server(
    repo: Path, certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KilnProcess]:
    proc = _start(repo, certs, False, tmp_path_factory.mktemp("tls-logs"))
    yield proc
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def mtls_server(
    repo: Path, certs: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KilnProcess]:
    proc = _start(repo, certs, True, tmp_path_factory.mktemp("mtls-logs"))
    yield proc
    assert proc.stop() == 0, proc.log()


def _inputs(mod: Any) -> tuple[list[Any], np.ndarray]:
    a, b = np.arange(4, dtype=np.float32).reshape(1, 4), np.full((1, 4), 2, dtype=np.float32)
    inputs = [mod.InferInput("INPUT0", [1, 4], "FP32"), mod.InferInput("INPUT1", [1, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return inputs, a + b


def _http(server: KilnProcess, **ssl_options: Path) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(
        server.http_url,
        ssl=True,
        ssl_options={key: str(path) for key, path in ssl_options.items()},
        insecure=False,  # the server's name is checked against its certificate
        connection_timeout=TIMEOUT_S,
        network_timeout=TIMEOUT_S,
    )


def _grpc(server: KilnProcess, certs: Certificates, cert: Path | None = None, key: Path | None = None) -> Any:
    return grpcclient.InferenceServerClient(
        server.grpc_url,
        ssl=True,
        root_certificates=str(certs.ca),
        private_key=None if key is None else str(key),
        certificate_chain=None if cert is None else str(cert),
    )


def _check_http(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    inputs, expected = _inputs(httpclient)
    np.testing.assert_array_equal(client.infer("add_sub", inputs).as_numpy("OUTPUT0"), expected)


def _check_grpc(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live(client_timeout=TIMEOUT_S)
    inputs, expected = _inputs(grpcclient)
    result = client.infer("add_sub", inputs, client_timeout=TIMEOUT_S)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)


def _health(server: KilnProcess, credentials: grpc.ChannelCredentials) -> int:
    with grpc.secure_channel(server.grpc_url, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S).status


async def _aio_http(server: KilnProcess, certs: Certificates, client: Pair | None) -> None:
    async with httpaio.InferenceServerClient(
        server.http_url, ssl=True, ssl_context=_context(certs, client), conn_timeout=TIMEOUT_S
    ) as hc:
        assert await hc.is_server_ready()
        inputs, expected = _inputs(httpclient)
        np.testing.assert_array_equal((await hc.infer("add_sub", inputs)).as_numpy("OUTPUT0"), expected)


async def _aio_grpc(server: KilnProcess, certs: Certificates, client: Pair | None) -> None:
    cert, key = (str(client[0]), str(client[1])) if client is not None else (None, None)
    gc = grpcaio.InferenceServerClient(
        server.grpc_url, ssl=True, root_certificates=str(certs.ca), private_key=key, certificate_chain=cert
    )
    try:
        assert await gc.is_server_ready(client_timeout=TIMEOUT_S)
        inputs, expected = _inputs(grpcclient)
        result = await gc.infer("add_sub", inputs, client_timeout=TIMEOUT_S)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), expected)
    finally:
        await gc.close()


def test_tls_clients_infer_over_http_and_grpc(tls_server: KilnProcess, certs: Certificates) -> None:
    _check_http(_http(tls_server, ca_certs=certs.ca))
    _check_grpc(_grpc(tls_server, certs))
    asyncio.run(_aio_http(tls_server, certs, None))
    asyncio.run(_aio_grpc(tls_server, certs, None))
    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
    assert _health(tls_server, credentials) == health_pb2.HealthCheckResponse.SERVING


def test_the_startup_log_says_tls_and_metrics_stay_plain(tls_server: KilnProcess) -> None:
    log = tls_server.log()
    assert f"HTTP server listening on https://{tls_server.http_url} (TLS)" in log
    assert f"gRPC server listening on {tls_server.grpc_url} (TLS)" in log
    with urllib.request.urlopen(
        f"http://127.0.0.1:{tls_server.metrics_port}/metrics", timeout=TIMEOUT_S
    ) as r:
        assert r.status == 200 and b"nv_inference_count" in r.read()


def test_plain_text_clients_fail_cleanly(tls_server: KilnProcess, certs: Certificates) -> None:
    plain_http = httpclient.InferenceServerClient(
        tls_server.http_url, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    with pytest.raises(HTTP_REFUSED):
        plain_http.is_server_live()
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        grpcclient.InferenceServerClient(tls_server.grpc_url).is_server_live(client_timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as err:
        with grpc.insecure_channel(tls_server.grpc_url) as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    _check_http(_http(tls_server, ca_certs=certs.ca))  # still serving


def test_clients_refuse_a_server_certificate_from_another_ca(
    tls_server: KilnProcess, certs: Certificates
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _http(tls_server, ca_certs=certs.other_ca).is_server_live()
    other = grpcclient.InferenceServerClient(
        tls_server.grpc_url, ssl=True, root_certificates=str(certs.other_ca)
    )
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        other.is_server_live(client_timeout=TIMEOUT_S)


def test_mutual_tls_serves_clients_with_a_certificate(mtls_server: KilnProcess, certs: Certificates) -> None:
    _check_http(_http(mtls_server, ca_certs=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key))
    _check_grpc(_grpc(mtls_server, certs, certs.client_cert, certs.client_key))
    asyncio.run(_aio_http(mtls_server, certs, _good(certs)))
    asyncio.run(_aio_grpc(mtls_server, certs, _good(certs)))
    credentials = grpc.ssl_channel_credentials(
        certs.ca.read_bytes(), certs.client_key.read_bytes(), certs.client_cert.read_bytes()
    )
    assert _health(mtls_server, credentials) == health_pb2.HealthCheckResponse.SERVING
    log = mtls_server.log()
    assert (
        f"HTTP server listening on https://{mtls_server.http_url} (TLS, client certificates required)" in log
    )
    assert f"gRPC server listening on {mtls_server.grpc_url} (TLS, client certificates required)" in log


@pytest.mark.parametrize("client", ["none", "other-ca"])
def test_mutual_tls_refuses_clients_without_a_good_certificate(
    mtls_server: KilnProcess, certs: Certificates, client: str
) -> None:
    pair = (certs.other_client_cert, certs.other_client_key) if client == "other-ca" else None
    http_options: dict[str, Path] = {"ca_certs": certs.ca}
    if pair is not None:
        http_options |= {"certfile": pair[0], "keyfile": pair[1]}
    with pytest.raises(HTTP_REFUSED):
        _http(mtls_server, **http_options).is_server_live()
    with pytest.raises(HTTP_REFUSED):
        asyncio.run(_aio_http(mtls_server, certs, pair))
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        _grpc(mtls_server, certs, *(pair or (None, None))).is_server_live(client_timeout=TIMEOUT_S)
    with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
        asyncio.run(_aio_grpc(mtls_server, certs, pair))
    # the refused handshakes left the server serving the next good client
    _check_http(_http(mtls_server, ca_certs=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key))
    _check_grpc(_grpc(mtls_server, certs, certs.client_cert, certs.client_key))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("cert without use-ssl", "--grpc-server-cert given without --grpc-use-ssl"),
        ("mutual without root", "--http-use-ssl-mutual needs --http-root-cert"),
        ("missing key file", "--grpc-server-key {missing}: no such file"),
        (
            "mismatched key",
            "--http-server-key {client_key} does not match the certificate in --http-server-cert",
        ),
    ],
)
def test_bad_tls_flags_stop_the_server_before_models_load(
    repo: Path, certs: Certificates, tmp_path: Path, case: str, message: str
) -> None:
    cert, key = str(certs.server_cert), str(certs.server_key)
    flags = {
        "cert without use-ssl": ["--grpc-server-cert", cert],
        "mutual without root": ["--http-use-ssl-mutual", "--http-server-cert", cert, "--http-server-key", key],
        "missing key file": ["--grpc-use-ssl", "--grpc-server-cert", cert, "--grpc-server-key", str(tmp_path / "k")],
        "mismatched key": [
            "--http-use-ssl", "--http-server-cert", cert, "--http-server-key", str(certs.client_key),
        ],
    }[case]  # fmt: skip
    proc = KilnProcess([repo], *flags, log_dir=tmp_path).start(wait=False)
    try:
        assert proc.wait_exit(timeout=60) == 1
    finally:
        proc.stop()
    log = proc.log()
    assert message.format(missing=tmp_path / "k", client_key=certs.client_key) in log, log
    assert "loaded model" not in log


def test_shutdown_is_not_held_by_an_idle_tls_client(repo: Path, certs: Certificates, tmp_path: Path) -> None:
    proc = _start(repo, certs, False, tmp_path)
    try:
        idle = _http(proc, ca_certs=certs.ca)
        assert idle.is_server_live()  # its keep-alive connection stays open and never answers close_notify
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait_exit(timeout=10) == 0
    finally:
        proc.stop()
