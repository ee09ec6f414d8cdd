"""Time spent in the garbage collector, by ``gc.callbacks`` (light: child processes without
TensorFlow import it)."""

from __future__ import annotations

import time


class GcTimer:
    """Wall time spent in the cyclic garbage collector (all threads), by gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full_seconds = 0.0
        self.full = 0
        self._started = 0.0
        self._generation = 0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._generation = info["generation"]
            return
        spent = time.perf_counter() - self._started
        self.seconds += spent
        if self._generation == 2:
            self.full += 1
            self.full_seconds += spent

    def reset(self) -> None:
        self.seconds = self.full_seconds = 0.0
        self.full = 0
