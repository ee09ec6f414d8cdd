# cellwatch: every entry point a newcomer, CI and the demo use.
# `make test` is what CI runs (.ci/run); it installs everything it needs on a fresh machine.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.cellwatch-installed
KAFKA_LOCAL_DIR := .cache/kafka/local
KAFKA_PORT ?= 19092
KAFKA_CONTROLLER_PORT ?= 19093

.PHONY: help install system-deps kafka-jars lint unit integration test kafka-up kafka-down demo clean

help:
	@echo "make demo        the main job: broker, synthetic data, training, worker, replay, summary"
	@echo "make test        install everything, lint, run unit and integration tests (what CI runs)"
	@echo "make unit        unit tests only (no servers)"
	@echo "make kafka-up    start a local Kafka broker on 127.0.0.1:$(KAFKA_PORT)"
	@echo "make kafka-down  stop it"

# The venv is rebuilt when pyproject.toml changes; the stamp keeps repeated runs fast.
$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "cellwatch needs Python 3.11+, found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(INSTALLED)

# Java 17, Maven and Prometheus come from the system's packages (apt), when missing and possible.
system-deps:
	bash deploy/install-system-deps.sh

kafka-jars: system-deps
	bash deploy/kafka/broker.sh fetch

lint: install
	$(VENV)/bin/ruff check .

unit: install
	$(PY) -m pytest tests/unit

integration: install kafka-jars
	$(PY) -m pytest tests/integration

test: install kafka-jars lint
	$(PY) -m pytest

kafka-up: kafka-jars
	@bash deploy/kafka/broker.sh start --data-dir $(KAFKA_LOCAL_DIR) --port $(KAFKA_PORT) --controller-port $(KAFKA_CONTROLLER_PORT)

kafka-down:
	@bash deploy/kafka/broker.sh stop --data-dir $(KAFKA_LOCAL_DIR)

demo: install kafka-jars
	bash deploy/demo.sh

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache artifacts runs
