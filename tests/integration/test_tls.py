"""TLS for real: the worker against a redis-server speaking TLS (`rediss://`) and against SMTP
servers speaking STARTTLS and implicit TLS with AUTH, each with a certificate from a private CA
the test makes. Verification stays on throughout; the worker is told about the CA the way an
operator would: `?ssl_ca_certs=` in `REDIS_URL`, `SSL_CERT_FILE` for SMTP."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import EmailTask, Producer
from service.local.redis_server import find_redis_server, free_port
from tests.conftest import WorkerProcess, wait_until
from tests.servers import Certificates, TlsSmtpServer, make_certificates, redis_server
from tests.smtp_server import SmtpServer

REDIS_PASSWORD = "redis-pw-7c1e9"  # noqa: S105 - a test server's password, checked for leaks
SMTP_USER, SMTP_PASSWORD = "mailer", "smtp-pw-41b0d"


@functools.cache
def redis_tls_support() -> str | None:
    """None when `redis-server` speaks TLS, else why not (builds without BUILD_TLS=yes)."""
    result = subprocess.run(
        [find_redis_server(), "--port", "0", "--tls-port", "0"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if "Bad directive" in output or "tls-port" in output:
        return f"{find_redis_server()} was built without TLS support: {output.strip()[-200:]}"
    return None


@pytest.fixture
def certs(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "certs")


@pytest.fixture
def tls_redis_url(certs: Certificates, tmp_path: Path) -> Iterator[str]:
    """A password-protected redis-server reachable only over TLS; its URL trusts the test CA."""
    reason = redis_tls_support()
    if reason:
        pytest.skip(reason)
    port = free_port()
    url = f"rediss://:{REDIS_PASSWORD}@localhost:{port}/0?ssl_ca_certs={certs.ca}"
    args = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs.cert),
            "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no", "--requirepass", REDIS_PASSWORD]  # fmt: skip
    with redis_server(tmp_path / "tls-redis", args, url):
        yield url


def enqueue_one(url: str, subject: str = "over TLS") -> str:
    async def run() -> str:
        async with Producer.from_url(url) as producer:
            return await producer.enqueue(EmailTask(to="a@example.com", subject=subject, text="x"))

    return asyncio.run(run())


@contextlib.contextmanager
def run_worker(env: dict[str, str], workdir: Path) -> Iterator[WorkerProcess]:
    """A worker subprocess for the block; killed at the end if still running."""
    worker = WorkerProcess(env, workdir)
    try:
        yield worker
    finally:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def test_worker_delivers_through_redis_over_tls(
    tls_redis_url: str, worker_env: dict[str, str], smtp: SmtpServer, tmp_path: Path
) -> None:
    task_id = enqueue_one(tls_redis_url)
    with run_worker({**worker_env, "REDIS_URL": tls_redis_url}, tmp_path) as worker:
        wait_until(lambda: smtp.task_ids() == [task_id], 15, "delivery via rediss://")
        assert worker.stop() == 0
        assert '"redis":"rediss://:***@localhost:' in worker.output()  # no password, no query


def test_redis_with_an_unknown_ca_fails_clearly_and_without_secrets(
    tls_redis_url: str, certs: Certificates, worker_env: dict[str, str], tmp_path: Path
) -> None:
    other = make_certificates(tmp_path / "other-ca", name="other")
    wrong = tls_redis_url.replace(str(certs.ca), str(other.ca))
    assert wrong != tls_redis_url
    with run_worker({**worker_env, "REDIS_URL": wrong}, tmp_path) as worker:
        worker.wait_for_log("redis_not_ready")
        assert worker.stop() == 0
        output = worker.output()
        assert "CERTIFICATE_VERIFY_FAILED" in output
        assert REDIS_PASSWORD not in output
        assert "ssl_ca_certs" not in output
        assert '"event":"worker_started"' not in output


# aiosmtpd's warning for AUTH on its implicit TLS port, which is encrypted: see TlsSmtpServer.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
@pytest.mark.parametrize(("security", "mode"), [("starttls", "starttls"), ("tls", "tls")])
def test_smtp_over_tls_with_auth_and_a_verified_certificate(
    security: str, mode: str, certs: Certificates, worker_env: dict[str, str], tmp_path: Path
) -> None:
    server = TlsSmtpServer(free_port(), certs, mode)
    server.behaviour.credentials = (SMTP_USER, SMTP_PASSWORD)
    server.start()
    try:
        env = {**worker_env, "SMTP_HOST": "localhost", "SMTP_PORT": str(server.port),
               "SMTP_SECURITY": security, "SMTP_USERNAME": SMTP_USER,
               "SMTP_PASSWORD": SMTP_PASSWORD}  # fmt: skip
        # Without the CA the certificate cannot be verified: nothing may be sent.
        enqueue_one(worker_env["REDIS_URL"])
        with run_worker(env, tmp_path) as worker:
            worker.wait_for_log("smtp_unavailable")  # the session never opens: paused
            assert worker.stop() == 0
            assert "CERTIFICATE_VERIFY_FAILED" in worker.output()
            assert server.received == []
        # SSL_CERT_FILE replaces OpenSSL's default CA bundle for Python's default context,
        # which is the one aiosmtplib builds: the worker now trusts the test CA.
        with run_worker({**env, "SSL_CERT_FILE": str(certs.ca)}, tmp_path) as worker:
            wait_until(lambda: len(server.received) == 1, 15, f"delivery over {mode}")
            assert worker.stop() == 0
    finally:
        server.stop()


def test_no_password_or_credential_url_in_any_log_line(
    tls_redis_url: str, certs: Certificates, worker_env: dict[str, str], tmp_path: Path
) -> None:
    server = TlsSmtpServer(free_port(), certs, "starttls")
    server.behaviour.credentials = (SMTP_USER, SMTP_PASSWORD)
    server.start()
    try:
        task_id = enqueue_one(tls_redis_url)
        env = {**worker_env, "REDIS_URL": tls_redis_url, "SMTP_HOST": "localhost",
               "SMTP_PORT": str(server.port), "SMTP_SECURITY": "starttls",
               "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": SMTP_PASSWORD,
               "SSL_CERT_FILE": str(certs.ca), "LOG_LEVEL": "DEBUG"}  # fmt: skip
        with run_worker(env, tmp_path) as worker:
            wait_until(lambda: server.task_ids() == [task_id], 15, "the delivery")
            worker.wait_for_log("task_sent")
            assert worker.stop() == 0
            output = worker.output()  # stdout and stderr, every level down to DEBUG
    finally:
        server.stop()
    assert '"event":"task_sent"' in output
    credential_url = tls_redis_url.partition("?")[0]
    for secret in (REDIS_PASSWORD, SMTP_PASSWORD, tls_redis_url, credential_url):
        assert secret not in output


def test_no_password_in_the_logs_of_failed_logins(
    tls_redis_url: str, certs: Certificates, worker_env: dict[str, str], tmp_path: Path
) -> None:
    # Error paths log exceptions with tracebacks: the riskier place for a secret to leak.
    wrong_redis_password = "wrong-redis-pw-5d2a"  # noqa: S105
    wrong_url = tls_redis_url.replace(REDIS_PASSWORD, wrong_redis_password)
    with run_worker(
        {**worker_env, "REDIS_URL": wrong_url, "LOG_LEVEL": "DEBUG"}, tmp_path
    ) as worker:
        assert worker.process.wait(timeout=30) == 1  # a wrong password does not heal by waiting
        output = worker.output()
    assert "AuthenticationError" in output
    assert '"event":"worker_failed"' in output
    for secret in (wrong_redis_password, wrong_url, wrong_url.partition("?")[0]):
        assert secret not in output

    server = TlsSmtpServer(free_port(), certs, "starttls")
    server.behaviour.credentials = (SMTP_USER, SMTP_PASSWORD)
    server.start()
    try:
        enqueue_one(tls_redis_url)
        env = {**worker_env, "REDIS_URL": tls_redis_url, "SMTP_HOST": "localhost",
               "SMTP_PORT": str(server.port), "SMTP_SECURITY": "starttls",
               "SMTP_USERNAME": SMTP_USER, "SMTP_PASSWORD": "wrong-smtp-pw-9e3f",
               "SSL_CERT_FILE": str(certs.ca), "LOG_LEVEL": "DEBUG"}  # fmt: skip
        with run_worker(env, tmp_path) as worker:
            worker.wait_for_log("smtp_unavailable")  # the session never opens: paused
            assert worker.stop() == 0
            output = worker.output()
    finally:
        server.stop()
    assert "535" in output  # the server's refusal is there...
    assert "wrong-smtp-pw-9e3f" not in output  # ...the password is not
    assert REDIS_PASSWORD not in output
    assert server.received == []
