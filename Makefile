# Thin wrapper over the real commands; every target installs what it needs first.
SHELL := /bin/bash
PY := .venv/bin/python
NODES ?= 12
SERVICE ?= gateway

.PHONY: install services up down status restart restart-probe demo test test-cluster cluster-up cluster-down test-unit test-integration bench bench-quick bench-cells bench-scripts lint images

install:            ## uv + the workspace in .venv
	@bash scripts/bootstrap.sh

services:           ## Redis and RabbitMQ: started when installed but not running
	@bash scripts/ensure-services.sh

up: install services    ## the whole stack in the background, ready, URLs printed
	@$(PY) scripts/stack.py up

down:               ## stop what `make up` started (by PID)
	@$(PY) scripts/stack.py down

status:
	@$(PY) scripts/stack.py status

restart:            ## restart one service of `make up` (SERVICE=gateway: no connection refused)
	@$(PY) scripts/stack.py restart $(SERVICE)

restart-probe:      ## `make restart` (gateway) while a connection is tried every 20 ms: figures
	@$(PY) scripts/restart_probe.py

demo: install services  ## the main job (see README)
	@$(PY) scripts/demo.py --nodes $(NODES)

test: install services  ## every test: unit, Lua, integration (real Redis and RabbitMQ); the Lua tests again on a Redis Cluster
	@$(PY) -m pytest
	@$(MAKE) --no-print-directory test-cluster

test-cluster: install  ## the Redis tests of shared/ on a local Redis Cluster (3 masters, 3 replicas), started and stopped here
	@$(PY) -m lingua_shared.devcluster run -- $(PY) -m pytest -q shared/tests

cluster-up: install    ## a local Redis Cluster (3 masters, 3 replicas) in .run/redis-cluster; prints its URL
	@$(PY) -m lingua_shared.devcluster up

cluster-down:          ## stop the cluster of `make cluster-up` (by PID)
	@$(PY) -m lingua_shared.devcluster down

test-unit: install services
	@$(PY) -m pytest -m "not integration"

test-integration: install services
	@$(PY) -m pytest -m integration

bench: install services ## every benchmark scenario (<= 25 min): bench/results/latest.json + plots
	@$(PY) -m lingua_bench

bench-quick: install services ## the same scenarios for a few seconds each (smoke run)
	@$(PY) -m lingua_bench --quick

bench-cells: install ## Redis load of one cell vs three cells on a 3-master cluster: bench/results/cells-*.json
	@$(PY) -m lingua_bench.cells_capacity --seconds 8 --out bench/results/cells-$$(date -u +%Y-%m-%d).json

bench-scripts: install services ## node-script and stats-snapshot figures: bench/results/scripts.json
	@$(PY) scripts/bench.py

images:             ## every image (podman or docker; local Debian bases where no registry answers): sizes, build times
	@python3 scripts/images.py

lint: install
	@.venv/bin/ruff check . && .venv/bin/ruff format --check .
