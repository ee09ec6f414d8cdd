"""Model reload in a running worker: a model of the same layout keeps every stream's state,
another layout restarts learning without applying a reading twice, other channels are
refused, and the watcher loads on change or request and survives a broken artifact."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
from prometheus_client import CollectorRegistry

from cellwatch.wiring import PartWrappers, assemble_worker
from detector.step import StreamingStep
from streaming.engine import Reading, ScoringEngine
from streaming.metrics import WorkerMetrics
from streaming.model_reload import ModelWatcher
from streaming.state_store import StateStore
from streaming.worker import Worker
from tests.unit.streaming.broker_fakes import (
    CONFIG,
    Broker,
    BrokerChangelog,
    BrokerSink,
    all_readings,
    assign,
    make_worker,
    model_of,
)
from tests.unit.streaming.conftest import (
    CHANNELS,
    MODEL_VERSION,
    record_of,
    score_records,
)


def worker_after_four_readings(step: StreamingStep, recorded: np.ndarray
                               ) -> tuple[Broker, CollectorRegistry, Worker, list[Reading]]:
    """A worker owning partitions 0 and 1 that has processed the first four readings."""
    broker = Broker(all_readings(recorded))
    registry = CollectorRegistry()
    worker = make_worker(step, broker, registry)
    assign(worker, [0, 1])
    readings = all_readings(recorded)
    worker.process([record_of(r) for r in readings[:4]])
    return broker, registry, worker, readings


def test_a_model_with_the_same_layout_keeps_the_states(
        step: StreamingStep, recorded: np.ndarray) -> None:
    broker, registry, worker, readings = worker_after_four_readings(step, recorded)
    before = worker.store.state.copy()
    worker.offer_model(model_of(step, version="v2"))
    worker.swap_offered_model()
    np.testing.assert_array_equal(worker.store.state, before)
    worker.process([record_of(readings[4])])
    assert b'"model_version":"v2"' in broker.log[-1].value
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "kept_state"}) == 1
    assert registry.get_sample_value("cellwatch_model_info", {
        "version": "v2", "trained_at": "2024-01-01T00:00:00Z",
        "state_layout": f"{step.layout.version}/{step.layout.size}"}) == 1


def test_a_model_with_another_layout_restarts_learning_without_reapplying(
        step: StreamingStep, recorded: np.ndarray, model_parts) -> None:
    from detector.model import step_params
    from tests.unit.detector.conftest import make_model

    _, wider = make_model(time_features=True, memory_units=step.layout.memory_units + 2)
    new_step = StreamingStep(step_params(wider), model_parts.scaler, step.scorer)
    broker, registry, worker, readings = worker_after_four_readings(step, recorded)
    worker.offer_model(model_of(new_step, version="v2"))
    worker.swap_offered_model()
    assert worker.store.layout == new_step.layout
    np.testing.assert_array_equal(worker.store.state[worker.store.rows_in_use()],
                                  new_step.layout.initial(2))
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "reset_state"}) == 1
    # A replayed reading is still recognised as applied; the next one is scored fresh.
    worker.process([record_of(r) for r in readings[:5]])
    assert registry.get_sample_value("cellwatch_readings_skipped_total") == 4
    fresh = ScoringEngine(new_step, StateStore(new_step.layout), CHANNELS, "v2", 3)
    assert broker.on("scores")[-1].value == score_records(fresh.process([readings[4]]))[0][1]


def test_a_reloaded_model_is_served_by_an_engine_wiring_builds(step: StreamingStep) -> None:
    """The engine of a reloaded model comes from the same factory as the first one, so the
    parts the caller wrapped (the benchmarks' timers) stay wrapped after a reload."""
    wrapped: list[str] = []

    def mark(engine: ScoringEngine) -> ScoringEngine:
        wrapped.append(engine.model_version)
        return engine

    worker = assemble_worker(CONFIG, model_of(step), BrokerSink(Broker([])),
                             WorkerMetrics(CollectorRegistry()),
                             changelog=BrokerChangelog(Broker([])),
                             wrappers=PartWrappers(engine=mark))
    worker.offer_model(model_of(step, version="v2"))
    worker.swap_offered_model()
    assert wrapped == [MODEL_VERSION, "v2"]
    assert worker.engine.model_version == "v2"


def test_a_model_with_other_channels_is_refused(step: StreamingStep) -> None:
    registry = CollectorRegistry()
    worker = make_worker(step, Broker([]), registry)
    worker.offer_model(dataclasses.replace(model_of(step, "v9"), channels=("a", "b", "c")))
    worker.swap_offered_model()
    assert worker.model.version == MODEL_VERSION
    assert registry.get_sample_value("cellwatch_model_reloads_total",
                                     {"outcome": "failed"}) == 1


def test_the_watcher_loads_on_change_or_request_and_survives_a_broken_artifact() -> None:
    signature = ["v1"]
    loads: list[str] = []
    offered: list[str] = []
    failures: list[BaseException] = []

    def load() -> str:
        if signature[0] == "broken":
            raise ValueError("metadata.json: truncated")
        loads.append(signature[0])
        return f"model-{signature[0]}"

    requested = threading.Event()
    watcher = ModelWatcher(lambda: signature[0], load, offered.append, failures.append,
                           poll_s=0, stop=threading.Event(), reload_requested=requested)
    assert not watcher.check()  # unchanged
    signature[0] = "v2"
    assert watcher.check() and offered == ["model-v2"]
    assert not watcher.check()
    requested.set()  # SIGHUP: load again even though nothing changed
    assert watcher.check() and offered == ["model-v2", "model-v2"]
    signature[0] = "broken"
    assert not watcher.check() and len(failures) == 1
    assert "truncated" in str(failures[0])
    signature[0] = "v3"
    assert watcher.check() and offered[-1] == "model-v3"


def test_the_watcher_thread_stops_with_the_worker() -> None:
    stop = threading.Event()
    watcher = ModelWatcher(lambda: 1, lambda: None, lambda _m: None, lambda _e: None,
                           poll_s=0.01, stop=stop)
    with watcher:
        stop.set()
    assert not watcher._thread.is_alive()
