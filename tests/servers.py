"""Test servers configured unlike the shared fixtures: a redis-server with any options (TLS,
a password, a bad eviction policy), TLS certificates, and an aiosmtpd server speaking TLS."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.local.redis_server import find_redis_server
from tests.smtp_server import SmtpServer, _Handler


@contextlib.contextmanager
def redis_server(
    workdir: Path,
    args: list[str],
    url: str,
    *,
    config_file: Path | None = None,
    **client_options: Any,
) -> Iterator[subprocess.Popen[bytes]]:
    """`redis-server [config_file]` with `args`, until the block ends; ready once `url` answers.

    It listens on 127.0.0.1 and writes under `workdir` whatever the config file says.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "redis.log"
    config = [str(config_file)] if config_file else []  # redis-server wants it first
    process = subprocess.Popen(
        [find_redis_server(), *config, "--bind", "127.0.0.1", "--dir", str(workdir.resolve()),
         "--logfile", str(log), *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            try:
                with redis_sync.Redis.from_url(url, **client_options) as client:
                    client.ping()
                break
            except redis_sync.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
    key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
    decipher_only=False,
)  # fmt: skip


@dataclass(frozen=True)
class Certificates:
    """A private CA and a server certificate it signed, valid for localhost and 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, name: str = "test") -> Certificates:
    """Write a fresh CA and server certificate (PEM) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def server_tls_context(certificates: Certificates) -> ssl.SSLContext:
    """What a server presents: the certificate chain of `certificates`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    return context


class TlsSmtpServer(SmtpServer):
    """The recording SMTP server of `tests.smtp_server`, speaking TLS and requiring AUTH.

    `mode="starttls"`: plain connection, STARTTLS required before anything else.
    `mode="tls"`: TLS from the first byte (port 465 style).
    Either way AUTH is required, and offered only inside TLS.
    """

    def __init__(self, port: int, certificates: Certificates, mode: str) -> None:
        super().__init__(port)
        self._controller.loop.close()  # the plain server's controller, replaced below unused
        context = server_tls_context(certificates)
        # aiosmtpd only counts a STARTTLS upgrade as TLS for auth_require_tls: on an implicit
        # TLS port it would never offer AUTH. Every byte there is encrypted anyway.
        tls: dict[str, Any] = (
            {"tls_context": context, "require_starttls": True, "auth_require_tls": True}
            if mode == "starttls"
            else {"ssl_context": context, "auth_require_tls": False}
        )
        # (aiosmtpd then warns about AUTH without TLS on each connection: tests using this
        # mode ignore that warning.)
        self._controller = Controller(
            _Handler(self),
            hostname="127.0.0.1",
            port=port,
            server_hostname="localhost",
            authenticator=self._authenticate,
            auth_required=True,
            **tls,
        )
