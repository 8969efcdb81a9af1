"""The chaos harness: workers, Redis and SMTP under faults, and the proof that nothing is lost.

`python -m tests.chaos --seeds 1 2 3` (or `make chaos`) runs it by hand; `test_chaos.py` runs a
short version under `make test`. See docs/reliability.md.
"""
