"""Child processes of the benchmarks (spawned: no TensorFlow state inherited): their results
and their end."""

from __future__ import annotations

import queue
import time


def get_result(results, deadline: float, what: str):
    try:
        return results.get(timeout=max(0.0, deadline - time.perf_counter()))
    except queue.Empty:
        raise TimeoutError(f"{what}: no result before the deadline") from None


def end_processes(processes) -> None:
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join(timeout=10)
