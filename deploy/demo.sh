#!/usr/bin/env bash
# `make demo`: the main job of cellwatch, end to end on this machine, in a few minutes.
# Starts a local Kafka broker, generates a labeled recording, trains a small model, starts the
# worker, replays the recording into Kafka, shows live progress from the worker's metrics,
# prints a summary (anomalies found versus labeled) with plots, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
RUN=runs/demo
DATA_DIR=.cache/kafka/demo
PORT=${DEMO_KAFKA_PORT:-19192}
CONTROLLER_PORT=${DEMO_KAFKA_CONTROLLER_PORT:-19193}
METRICS_PORT=${DEMO_METRICS_PORT:-19108}
SUFFIX=$(date +%s)
export CELLWATCH_KAFKA_READINGS_TOPIC=demo.readings.$SUFFIX
export CELLWATCH_KAFKA_SCORES_TOPIC=demo.scores.$SUFFIX
export CELLWATCH_KAFKA_ANOMALIES_TOPIC=demo.anomalies.$SUFFIX
export CELLWATCH_KAFKA_DEAD_LETTER_TOPIC=demo.dead-letter.$SUFFIX
export CELLWATCH_KAFKA_GROUP_ID=demo-$SUFFIX
export CELLWATCH_MODEL_ARTIFACT=$RUN/model
export CELLWATCH_METRICS_PORT=$METRICS_PORT
export TF_CPP_MIN_LOG_LEVEL=2

worker_pid=""
cleanup() {
  if [[ -n "$worker_pid" ]] && kill -0 "$worker_pid" 2>/dev/null; then
    kill -TERM "$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  bash deploy/kafka/broker.sh stop --data-dir "$DATA_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
rm -rf "$RUN"
mkdir -p "$RUN"

echo "== 1/6 starting a local Kafka broker"
bootstrap=$(bash deploy/kafka/broker.sh start --data-dir "$DATA_DIR" --port "$PORT" \
  --controller-port "$CONTROLLER_PORT" | tail -n 1)
export CELLWATCH_KAFKA_BOOTSTRAP_SERVERS=$bootstrap
echo "broker ready at $bootstrap"

echo "== 2/6 generating a labeled recording"
cellwatch synth "$RUN/data" --streams 40 --channels 4 --length 3000 --interval 300 \
  --anomaly-rate 4

echo "== 3/6 training a small model"
cellwatch train "$RUN/data/readings.csv" --epochs 8
test -f "$RUN/model/metadata.json"

echo "== 4/6 replaying the recording into Kafka (paced), starting the worker"
cellwatch replay "$RUN/data/readings.csv" --to-kafka "$CELLWATCH_KAFKA_READINGS_TOPIC" \
  --speed 20000 > "$RUN/replay.log" 2>&1 &
replay_pid=$!
for _ in $(seq 1 60); do
  grep -q "replaying" "$RUN/replay.log" 2>/dev/null && break
  sleep 0.5
done
cellwatch run > "$RUN/worker.log" 2>&1 &
worker_pid=$!
echo "worker pid $worker_pid; metrics at http://127.0.0.1:$METRICS_PORT/metrics"

echo "== 5/6 live progress"
python deploy/demo_watch.py --metrics "http://127.0.0.1:$METRICS_PORT/metrics" \
  --bootstrap "$bootstrap" --scores-topic "$CELLWATCH_KAFKA_SCORES_TOPIC" \
  --anomalies-topic "$CELLWATCH_KAFKA_ANOMALIES_TOPIC" --recording "$RUN/data/readings.csv" \
  --labels "$RUN/data/labels.json" --plots "$RUN/plots"
wait "$replay_pid"
tail -n 1 "$RUN/replay.log"

echo "== 6/6 stopping the worker (SIGTERM: finish the batch, commit, exit)"
kill -TERM "$worker_pid"
wait "$worker_pid"
worker_pid=""
echo "worker exited cleanly; its log: $RUN/worker.log; plots: $RUN/plots/"
