"""Benchmark harness: `python -m bench` (or `make bench`) measures the worker and its floors.

Not part of the service: it drives the public surface only (`service.EmailTask`,
`service.Producer`, `python -m service.worker` configured by environment variables, and
`service.local.redis_server`), so internal changes to the worker do not break it.
"""
