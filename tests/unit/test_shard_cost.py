"""The arithmetic of bench/shard_cost.py: per-email figures from two INFO samples."""

from __future__ import annotations

from typing import Any

import pytest

from bench.shard_cost import NodeSample, node_sample, phase_cost


def _sample(cpu: float, main: float | None, calls: dict[str, int]) -> NodeSample:
    usec = {name: 10 * count for name, count in calls.items()}
    return NodeSample(cpu_s=cpu, main_thread_cpu_s=main, net_bytes=0, calls=calls, usec=usec)


def test_a_sample_reads_redis_py_info_replies() -> None:
    sample = node_sample(
        {"used_cpu_sys": 1.5, "used_cpu_user": 2.25,
         "used_cpu_sys_main_thread": 1.0, "used_cpu_user_main_thread": 2.0},
        {"total_net_input_bytes": 100, "total_net_output_bytes": 20},
        {"cmdstat_evalsha": {"calls": 3, "usec": 90}, "cmdstat_xadd": {"calls": 3, "usec": 30}},
    )  # fmt: skip
    assert (sample.cpu_s, sample.main_thread_cpu_s, sample.net_bytes) == (3.75, 3.0, 120)
    assert sample.calls == {"evalsha": 3, "xadd": 3}
    assert sample.usec == {"evalsha": 90, "xadd": 30}
    # Redis < 6.2 has no per-thread figures.
    assert node_sample({"used_cpu_sys": 1, "used_cpu_user": 1}, {"total_net_input_bytes": 0,
        "total_net_output_bytes": 0}, {}).main_thread_cpu_s is None  # fmt: skip


# (cpu, main thread cpu, calls) before and after, emails, seconds; then the expected CPU us
# per email, calls in the phase and busy share.
CASES = [
    # The command thread's CPU is what saturates; commands that did not run are left out.
    ((1.0, 0.5, {"evalsha": 5, "ping": 2}), (1.3, 0.7, {"evalsha": 105, "ping": 2}), 100, 1.0,
     2000.0, {"evalsha": 100}, 0.2),
    # A command first seen in the phase counts from zero.
    ((1.0, 0.5, {}), (1.1, 0.55, {"xadd": 50}), 50, 0.5, 1000.0, {"xadd": 50}, 0.1),
    # Without per-thread figures, the process's CPU.
    ((1.0, None, {}), (1.2, None, {"xadd": 10}), 10, 2.0, 20000.0, {"xadd": 10}, 0.1),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_phase_cost_per_email(case: tuple[Any, ...]) -> None:
    before, after, emails, seconds, cpu_us, calls, busy = case
    cost = phase_cost(_sample(*before), _sample(*after), emails, seconds)
    assert cost.cpu_usec_per_email == pytest.approx(cpu_us)
    assert cost.calls == calls
    assert cost.calls_per_email == pytest.approx(sum(calls.values()) / emails)
    assert cost.busy == pytest.approx(busy)
