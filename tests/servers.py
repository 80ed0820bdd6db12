"""Start real ``kiln serve`` processes on free ports for tests, and stop them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: every socket is held open until all are chosen (one at a time, the OS may
    hand the same port out twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout}s")
        time.sleep(0.02)


class KilnProcess:
    """A ``kiln serve`` subprocess; ``start()`` returns once HTTP and gRPC answer."""

    def __init__(
        self,
        repositories: Sequence[Path],
        *extra: str,
        log_dir: Path,
        http_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # http_ssl_context: the server's HTTP port speaks TLS; readiness is checked over https with this context
        self.http_ssl_context = http_ssl_context
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.http_url = f"127.0.0.1:{self.http_port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_dir / f"kiln-{self.http_port}.log"
        self.args = [sys.executable, "-m", "kiln", "serve"]
        for repo in repositories:
            self.args += ["--model-repository", str(repo)]
        self.args += [
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0, wait: bool = True) -> KilnProcess:
        self._log = open(self.log_path, "wb")
        # this folder on the path: tests may register backends of their own (--backend NAME=MODULE:CLASS)
        here = str(Path(__file__).resolve().parent)
        path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_live(timeout)
        return self

    def wait_live(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"kiln serve exited with {self.proc.returncode}:\n{self.log()}")
            scheme = "http" if self.http_ssl_context is None else "https"
            url = f"{scheme}://{self.http_url}/v2/health/live"
            try:
                with urllib.request.urlopen(url, timeout=1, context=self.http_ssl_context) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"kiln serve did not come up in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> KilnProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Certificates:
    """PEM files made for one test run: a CA, a server certificate for 127.0.0.1 and localhost, a client
    certificate from that CA, and a second CA with a client certificate of its own (which the server must refuse).
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


_CONFIG = """[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ext]
{extensions}
subjectKeyIdentifier = hash
"""
_CA_EXTENSIONS = "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign"
_LEAF_EXTENSIONS = (
    "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
    "authorityKeyIdentifier = keyid\nextendedKeyUsage = {usage}"
)


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


def _issue(directory: Path, name: str, extensions: str, ca: tuple[Path, Path] | None) -> tuple[Path, Path]:
    """A P-256 key and a certificate for ``name``: self-signed when ``ca`` is None, else signed by (cert, key)."""
    config, key, cert = (directory / f"{name}{suffix}" for suffix in (".cnf", ".key", ".pem"))
    config.write_text(_CONFIG.format(cn=f"kiln test {name}", extensions=extensions))
    new_key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key)
    if ca is None:
        _openssl(
            "req", "-x509", "-config", config, "-extensions", "ext", *new_key, "-out", cert, "-days", "2"
        )
        return cert, key
    request = directory / f"{name}.csr"
    _openssl("req", "-new", "-config", config, *new_key, "-out", request)
    _openssl(
        "x509", "-req", "-in", request, "-CA", ca[0], "-CAkey", ca[1], "-set_serial", str(secrets.randbits(62)),
        "-days", "2", "-extfile", config, "-extensions", "ext", "-out", cert,
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """Every file of :class:`Certificates`, made with the ``openssl`` command into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _issue(directory, "ca", _CA_EXTENSIONS, None)
    other_ca = _issue(directory, "other-ca", _CA_EXTENSIONS, None)
    server_extensions = _LEAF_EXTENSIONS.format(usage="serverAuth")
    server_extensions += "\nsubjectAltName = IP:127.0.0.1, DNS:localhost"
    server = _issue(directory, "server", server_extensions, ca)
    client = _issue(directory, "client", _LEAF_EXTENSIONS.format(usage="clientAuth"), ca)
    other_client = _issue(directory, "other-client", _LEAF_EXTENSIONS.format(usage="clientAuth"), other_ca)
    return Certificates(ca[0], *server, *client, other_ca[0], *other_client)
