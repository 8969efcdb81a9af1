"""Host names and Redis URLs, checked before anything connects: tables, and redis-py itself."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)

from service.addresses import REDIS_URL_OPTIONS, host_problem, redis_tls_problem, redis_url_problem
from service.connection import READ_BLOCK_MS, check_redis_url
from service.errors import ConfigError
from tests.servers import make_certificates

SECRET = "hunter2-pw"  # noqa: S105 - in URLs below, checked for leaks


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("localhost", None),
        ("smtp.example.com", None),
        ("smtp.example.com.", None),  # fully qualified
        ("red-abc123_internal", None),  # underscores: container and service names
        ("bücher.example", None),  # internationalized, sent as xn--bcher-kva
        ("127.0.0.1", None),
        ("::1", None),
        ("0.0.0.0", None),  # noqa: S104 - a listening address, not a bind here
        ("", "is empty"),
        ("   ", "is empty"),
        (" smtp.example.com", "contains a space"),
        ("smtp example.com", "contains a space"),
        ("smtp.example.com\n", "contains a space"),
        ("smtp://smtp.example.com", "not a URL"),
        ("[::1]", "without brackets"),
        ("smtp.example.com:587", "must not carry a port"),
        ("smtp..example.com", "not a valid host name"),
        ("-smtp.example.com", "not a valid host name"),
        ("smtp!.example.com", "not a valid host name"),
        ("a" * 64 + ".example.com", "not a valid host name"),
    ],
)
def test_host_problem(host: str, problem: str | None) -> None:
    found = host_problem(host)
    assert found == problem if problem is None else problem in (found or "")


def test_host_with_a_port_names_the_port_setting() -> None:
    assert (
        host_problem("mail:25", port_setting="SMTP_PORT") == "must not carry a port (set SMTP_PORT)"
    )


def _problem(url: str) -> str | None:
    return redis_url_problem(url, min_socket_timeout=READ_BLOCK_MS / 1000)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://localhost:6379/0", None),
        ("redis://localhost", None),
        ("redis://localhost/", None),
        (f"rediss://user:{SECRET}@host:6379/15", None),
        ("redis://[::1]:6379/0", None),
        ("unix:///run/redis.sock?db=2", None),
        ("redis://h/0?socket_timeout=30&socket_connect_timeout=2.5&client_name=worker-1", None),
        ("redis://h/0?socket_keepalive=yes&health_check_interval=0", None),
        (f"redis://h/0?username=u&password={SECRET}", None),
        (
            "rediss://h/0?ssl_cert_reqs=required&ssl_check_hostname=false&ssl_min_version=772"
            "&ssl_ciphers=ECDHE+AESGCM&ssl_include_verify_flags=VERIFY_X509_STRICT",
            None,
        ),
        ("http://h:1", "must start with redis://, rediss:// or unix://"),
        ("", "must start with redis://"),
        ("redis://", "has no host"),
        ("redis://[::1", "is not a valid URL"),
        ("redis://h:99999", "has an invalid port"),
        ("redis://h:port", "has an invalid port"),
        ("redis://h:0", "has an invalid port"),
        ("redis://local host:6379", "its host contains a space"),
        ("redis://h/abc", "database (the path after the host) must be a number"),
        ("redis://h/1/2", "database (the path after the host) must be a number"),
        ("redis://h/-1", "database (the path after the host) must be a number"),
        ("redis://h/1?db=2", "gives the database twice"),
        ("redis://h?db=abc", "option db must be a whole number"),
        ("unix://", "needs a socket path"),
        ("unix://redis.sock", "takes a socket path, not a host"),
        ("redis://h/0?socket_timeout=abc", "option socket_timeout must be a number of seconds"),
        ("redis://h/0?socket_timeout=nan", "option socket_timeout must be a number of seconds"),
        ("redis://h/0?socket_timeout=2", "above 2 (the longest blocking read)"),
        ("redis://h/0?socket_connect_timeout=0", "option socket_connect_timeout must be"),
        ("redis://h/0?health_check_interval=-5", "option health_check_interval must be a whole"),
        ("redis://h/0?socket_keepalive=maybe", "option socket_keepalive must be true or false"),
        ("redis://h/0?client_name=my worker", "option client_name must be ASCII without spaces"),
        ("redis://h/0?ssl_cert_reqs=none", "option ssl_cert_reqs applies only to rediss://"),
        ("unix:///s.sock?socket_keepalive=1", "applies only to redis:// and rediss:// URLs"),
        ("unix:///s.sock?ssl_ca_certs=/ca.pem", "applies only to rediss://"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "option ssl_cert_reqs must be none|optional|required"),
        ("rediss://h/0?ssl_min_version=5", "option ssl_min_version must be a TLS version"),
        ("rediss://h/0?ssl_ciphers=nonsense", "option ssl_ciphers selects no cipher"),
        ("rediss://h/0?ssl_ca_data=garbage", "option ssl_ca_data must be PEM certificates"),
        ("rediss://h/0?ssl_exclude_verify_flags=NOPE", "must be names of ssl.VerifyFlags"),
        ("redis://h/0?protocol=3", "option protocol cannot be set: the service reads RESP2"),
        ("redis://h/0?decode_responses=true", "option decode_responses cannot be set"),
        ("redis://h/0?max_connections=5", "option max_connections cannot be set"),
        ("redis://h/0?timeout=5", "has an unsupported option 'timeout'"),
        ("redis://h/0?sockettimeout=30", "has an unsupported option 'sockettimeout'"),
        ("redis://h?db=1&db=2", "gives option 'db' 2 times"),
    ],
)
def test_redis_url_problem(url: str, problem: str | None) -> None:
    found = _problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h/0?socket_timeout={SECRET}",
        f"redis://:{SECRET}@h/{SECRET}",
        f"redis://:{SECRET}@local host/0",
        f"redis://h/0?password={SECRET}&protocol={SECRET}",
        f"rediss://h/0?ssl_password={SECRET}&ssl_cert_reqs={SECRET}",
        f"redis://:{SECRET}@h:99999/0",
    ],
)
def test_no_problem_repeats_a_secret(url: str) -> None:
    found = _problem(url)
    assert found is not None
    assert SECRET not in found


_CLASSES = {
    "redis": Connection,
    "rediss": SSLConnection,
    "unix": UnixDomainSocketConnection,
}


def _parameters(cls: type[AbstractConnection]) -> set[str]:
    """The keyword arguments `cls` takes, through its bases (each passes **kwargs up)."""
    return {
        name
        for klass in cls.__mro__
        if "__init__" in vars(klass) and klass is not object
        for name in inspect.signature(vars(klass)["__init__"]).parameters
    }


@pytest.mark.parametrize("name", sorted(REDIS_URL_OPTIONS))
def test_every_option_allowed_is_one_redis_py_takes_for_its_schemes(name: str) -> None:
    # An option allowed for a scheme whose connection class lacks it would fail at connect.
    for scheme in REDIS_URL_OPTIONS[name].schemes:
        assert name in _parameters(_CLASSES[scheme]), (name, scheme)
    for scheme in set(_CLASSES) - REDIS_URL_OPTIONS[name].schemes:
        assert name not in _parameters(_CLASSES[scheme]), (name, scheme)


def test_every_query_parser_of_redis_py_is_allowed_pinned_or_refused() -> None:
    # A new redis-py option shows up here instead of passing silently.
    for name in URL_QUERY_ARGUMENT_PARSERS:
        found = _problem(f"rediss://h/0?{name}=1")
        assert name in REDIS_URL_OPTIONS or (found is not None and name in found), name


def test_tls_files_must_exist_and_load(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "certs")
    base = f"rediss://:{SECRET}@localhost:6379/0"
    assert redis_tls_problem(f"{base}?ssl_ca_certs={certs.ca}") is None
    assert redis_tls_problem(f"{base}?ssl_certfile={certs.cert}&ssl_keyfile={certs.key}") is None
    assert redis_tls_problem(f"{base}?ssl_ca_path={tmp_path / 'certs'}") is None
    assert redis_tls_problem(f"redis://localhost/0?ssl_ca_certs={tmp_path}/none") is None
    missing = redis_tls_problem(f"{base}?ssl_ca_certs={tmp_path}/nope.pem")
    assert missing == f"option ssl_ca_certs: '{tmp_path}/nope.pem' does not exist or cannot be read"
    not_a_dir = redis_tls_problem(f"{base}?ssl_ca_path={certs.ca}")
    assert not_a_dir is not None
    assert "ssl_ca_path" in not_a_dir
    (tmp_path / "not-pem.txt").write_text("not a certificate\n")
    garbage = redis_tls_problem(f"{base}?ssl_ca_certs={tmp_path / 'not-pem.txt'}")
    assert garbage is not None
    assert garbage.startswith("its TLS options do not load: ")
    other = make_certificates(tmp_path / "other", name="other")
    mismatch = redis_tls_problem(f"{base}?ssl_certfile={certs.cert}&ssl_keyfile={other.key}")
    assert mismatch is not None
    assert mismatch.startswith("its TLS options do not load: ")
    for problem in (missing, not_a_dir, garbage, mismatch):
        assert SECRET not in problem


def test_check_redis_url_raises_config_error_naming_redis_url() -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url(f"redis://:{SECRET}@h/0?socket_timeout=1")
    assert caught.value.variable == "REDIS_URL"
    assert "socket_timeout" in caught.value.reason
    assert SECRET not in str(caught.value)
