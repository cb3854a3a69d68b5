"""The TLS check against the real registry binary on loopback (no lab needed).

Loopback is fine here: this is our own client, which never skips verification (unlike
Docker, which treats 127.0.0.0/8 as insecure).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from tasks import pki
from tasks.registry import check_tls, legacy_certificate

REGISTRY = shutil.which("docker-registry")
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="docker-registry missing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(
    tmp_path: Path, tls: tuple[Path, Path] | None, htpasswd: Path | None = None
) -> Iterator[int]:
    port = free_port()
    config = tmp_path / "config.yml"
    lines = [
        "version: 0.1",
        "storage:",
        f"  filesystem: {{rootdirectory: {tmp_path / 'data'}}}",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    if tls:
        lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: test", f"    path: {htpasswd}"]
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [str(REGISTRY), "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def ca() -> pki.Issued:
    key = pki.generate_key()
    return pki.Issued(pki.issue_ca(key, ["127.0.0.1"]), key, None)


def write_pair(
    tmp_path: Path, cert: x509.Certificate, key: pki.PrivateKey
) -> tuple[Path, Path]:
    (tmp_path / "server.crt").write_bytes(pki.cert_pem(cert))
    (tmp_path / "server.key").write_bytes(pki.key_pem(key))
    return tmp_path / "server.crt", tmp_path / "server.key"


def test_our_certificate_passes_with_only_our_ca(
    tmp_path: Path, ca: pki.Issued
) -> None:
    key = pki.generate_key()
    cert = pki.issue_server_cert(ca.cert, ca.key, key, ["127.0.0.1"])
    with serve(tmp_path, write_pair(tmp_path, cert, key)) as port:
        result = check_tls("127.0.0.1", port, pki.cert_pem(ca.cert))
        assert result.ok, result.problem
        assert result.status == 200
        assert result.served_fingerprint == pki.fingerprint(cert)


def test_plain_http_is_named(tmp_path: Path, ca: pki.Issued) -> None:
    # C04: a registry started without its TLS settings.
    with serve(tmp_path, None) as port:
        result = check_tls("127.0.0.1", port, pki.cert_pem(ca.cert))
        assert not result.ok
        assert result.problem is not None
        assert "answers plain HTTP" in result.problem


def test_common_name_only_certificate_fails_and_is_recognised(
    tmp_path: Path, ca: pki.Issued
) -> None:
    # C01/C02: the IP only in the CN, as hand-made certificates often have it.
    key = pki.generate_key()
    now = pki.dt.datetime.now(pki.dt.UTC)
    cn_only = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.BACKDATE)
        .not_valid_after(now + pki.dt.timedelta(days=30))
        .sign(ca.key, hashes.SHA256())
    )
    assert legacy_certificate(pki.cert_pem(cn_only).decode()) is not None
    with serve(tmp_path, write_pair(tmp_path, cn_only, key)) as port:
        result = check_tls("127.0.0.1", port, pki.cert_pem(ca.cert))
        assert not result.ok
        assert result.problem is not None and "not trusted" in result.problem
    ours = pki.issue_server_cert(ca.cert, ca.key, key, ["127.0.0.1"])
    assert legacy_certificate(pki.cert_pem(ours).decode()) is None
