"""The worker process's garbage collector: start-up objects frozen, young collections rarer."""

from __future__ import annotations

import json
import subprocess
import sys

from service.worker.__main__ import YOUNG_COLLECTION_THRESHOLD

# In a process of its own: freezing would move the test runner's objects too.
_PROBE = """
import gc, json
from service.worker.__main__ import tune_garbage_collector
before = gc.get_threshold()
tune_garbage_collector()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def test_the_worker_freezes_start_up_and_collects_the_young_less_often() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(probe.stdout)
    before, after = seen["before"], seen["after"]
    assert after == [YOUNG_COLLECTION_THRESHOLD, before[1], before[2]]
    assert after[0] > before[0]
    assert seen["frozen"] > 10_000  # the imports' objects
