"""The streaming side of cellwatch: the Kafka worker, per-stream state, replay and metrics."""
