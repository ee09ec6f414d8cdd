"""Model reload without a restart: watch the artifact, load a new model beside the worker.

A background thread checks the artifact's signature (a cheap stat of the file written last
by an artifact save) every ``poll_s`` seconds, or at once when ``reload_requested`` is set
(the CLI sets it on SIGHUP). When the signature changed, or a reload was requested, it loads
the artifact on its own thread and offers the model to the worker, which swaps it in between
batches (:meth:`streaming.worker.Worker.offer_model`): loading never stalls scoring.

A load that fails (a half-copied or broken artifact) is logged and counted
(``cellwatch_model_reloads_total{outcome="failed"}``); the worker keeps serving the model it
has, and the watcher tries again when the signature changes again.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

from detector.step import StreamingStep
from streaming.engine import ScoringEngine
from streaming.metrics import WorkerMetrics, state_layout_label
from streaming.state_store import StateStore

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """The model the worker serves."""

    step: StreamingStep
    channels: tuple[str, ...]
    version: str
    trained_at: str
    trained_at_s: float


def swapped_engine(current: ModelInfo, offered: ModelInfo, store: StateStore,
                   engine_for: Callable[[ModelInfo], ScoringEngine], metrics: WorkerMetrics
                   ) -> ScoringEngine | None:
    """The engine that serves ``offered`` in place of ``current`` over ``store`` (built by
    ``engine_for``, as the first one was), or None when it cannot (other channels: refused,
    the current model stays). With the same state layout the streams keep their states;
    otherwise every stream starts its learning period again (its last reading time and
    offset stay, so nothing is applied twice)."""
    if tuple(offered.channels) != tuple(current.channels):
        log.error("model %s not loaded: its channels %s differ from the served model's %s",
                  offered.version, list(offered.channels), list(current.channels))
        metrics.record_model_reload("failed")
        return None
    kept = offered.step.layout == store.layout
    if not kept:
        store.reset_states(offered.step.layout)
    engine = engine_for(offered)
    metrics.set_model(offered.version, offered.trained_at, offered.trained_at_s,
                      state_layout_label(offered.step.layout))
    metrics.record_model_reload("kept_state" if kept else "reset_state")
    if kept:
        log.info("model %s replaced by %s; streams keep their states", current.version,
                 offered.version)
    else:
        log.warning("model %s replaced by %s with another state layout; all %d streams start "
                    "their learning period again", current.version, offered.version,
                    len(store))
    return engine


class ModelWatcher:
    """Loads a new model when the artifact changes or a reload is requested.

    Args:
        signature: returns something that changes whenever a new artifact is in place
            (None when there is no readable artifact).
        load: loads the artifact and returns the model to offer.
        offer: hands the loaded model to the worker.
        on_failure: called with the error of a failed load.
        poll_s: seconds between signature checks; 0 checks only on request.
        stop: ends the watcher.
        reload_requested: set to force a load now (SIGHUP); cleared by the watcher.
    """

    def __init__(self, signature: Callable[[], Any], load: Callable[[], Any],
                 offer: Callable[[Any], None], on_failure: Callable[[BaseException], None],
                 poll_s: float, stop: threading.Event,
                 reload_requested: threading.Event | None = None) -> None:
        self._signature = signature
        self._load = load
        self._offer = offer
        self._on_failure = on_failure
        self._poll_s = poll_s
        self._stop = stop
        self._requested = reload_requested or threading.Event()
        # Set on the way out, whatever the stop event says: a worker stopping after an error
        # has not set it, and waking the thread then must not load a model.
        self._closing = threading.Event()
        self._seen = signature()
        self._thread = threading.Thread(target=self._run, name="cellwatch-model-watcher",
                                        daemon=True)

    def __enter__(self) -> ModelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closing.set()
        self._requested.set()  # wakes the thread, which then sees it is closing
        # A load in progress is not waited for (the thread is a daemon): it would only delay
        # the exit, and its model would never be served.
        self._thread.join(timeout=1)

    def check(self) -> bool:
        """One check: loads and offers a model if due; returns whether it offered one."""
        requested = self._requested.is_set()
        self._requested.clear()
        current = self._signature()
        if not requested and (current == self._seen or current is None):
            return False
        self._seen = current
        try:
            model = self._load()
        except Exception as error:  # a broken artifact must not stop the worker
            log.error("model reload failed, still serving the current model: %s", error)
            self._on_failure(error)
            return False
        self._offer(model)
        return True

    def _run(self) -> None:
        while not (self._stop.is_set() or self._closing.is_set()):
            self._requested.wait(self._poll_s if self._poll_s > 0 else None)
            if self._stop.is_set() or self._closing.is_set():
                return
            self.check()
