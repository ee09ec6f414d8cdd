#!/usr/bin/env bash
# `make demo`: what cellwatch can show today, end to end on this machine.
# The streaming worker, replay and training commands join this script as they land; until
# then it starts the real local broker, shows the resolved settings, measures the streaming
# step against a per-reading Keras call, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA_DIR=.cache/kafka/demo
PORT=${DEMO_KAFKA_PORT:-19192}
CONTROLLER_PORT=${DEMO_KAFKA_CONTROLLER_PORT:-19193}

cleanup() { bash deploy/kafka/broker.sh stop --data-dir "$DATA_DIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== 1/3 starting a local Kafka broker"
bootstrap=$(bash deploy/kafka/broker.sh start --data-dir "$DATA_DIR" --port "$PORT" \
  --controller-port "$CONTROLLER_PORT" | tail -n 1)
echo "broker ready at $bootstrap"

echo "== 2/3 resolved settings"
CELLWATCH_KAFKA_BOOTSTRAP_SERVERS="$bootstrap" .venv/bin/cellwatch config show

echo "== 3/3 the streaming step, 100,000 streams, one core"
$PY benchmarks/step_throughput.py --seconds 0.5 --keras-readings 100

echo "== done; the broker is stopped on exit"
