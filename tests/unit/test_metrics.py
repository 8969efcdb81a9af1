"""The metrics server's address: a bind failure names the setting to change."""

from __future__ import annotations

import errno
import socket

import pytest

from service.errors import ConfigError
from service.listen import listen_error
from service.worker.metrics import WorkerMetrics


@pytest.mark.parametrize(
    ("error", "variable", "reason"),
    [
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "METRICS_HOST",
            "'metrics.invalid' does not resolve",
        ),
        (
            OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"),
            "METRICS_HOST",
            "'metrics.invalid' is not an address of this machine",
        ),
        (
            OSError(errno.EADDRINUSE, "Address already in use"),
            "METRICS_PORT",
            "9108 is in use on metrics.invalid (another worker on this machine?)",
        ),
        (
            OSError(errno.EACCES, "Permission denied"),
            "METRICS_PORT",
            "9108 needs privileges this process lacks",
        ),
        (
            OSError(errno.EINVAL, "Invalid argument"),
            "METRICS_PORT",
            "cannot listen on metrics.invalid:9108: Invalid argument",
        ),
    ],
)
def test_listen_error_blames_the_setting(error: OSError, variable: str, reason: str) -> None:
    found = listen_error(
        error,
        "metrics.invalid",
        9108,
        host_setting="METRICS_HOST",
        port_setting="METRICS_PORT",
        in_use=" (another worker on this machine?)",
    )
    assert (found.variable, found.reason) == (variable, reason)


def test_serving_on_a_port_in_use_raises_config_error() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        metrics = WorkerMetrics("emails")
        with pytest.raises(ConfigError) as caught:
            metrics.serve("127.0.0.1", port)
    assert caught.value.variable == "METRICS_PORT"
    assert caught.value.reason == f"{port} is in use on 127.0.0.1 (another worker on this machine?)"
    assert not metrics.serving
