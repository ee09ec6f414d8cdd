"""Timers around the worker's parts, handed to :func:`cellwatch.wiring.run_worker` as
:class:`~cellwatch.wiring.PartWrappers`: the worker is built and run as deployed, and each
part it uses reports its wall time (two ``perf_counter`` calls per call: well under 1 % of a
reading's time)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from benchmarks.end_to_end.gc_timer import GcTimer

if TYPE_CHECKING:
    from cellwatch.wiring import PartWrappers


@dataclasses.dataclass
class Timings:
    """Wall seconds of the worker's parts, summed over a run (time.perf_counter)."""

    poll: float = 0.0
    parse: float = 0.0
    engine: float = 0.0
    step: float = 0.0
    send: float = 0.0
    flush: float = 0.0
    commit: float = 0.0
    # From each poll that returned readings to the next poll: the batch, and the checkpoint
    # or housekeeping that followed it.
    process: float = 0.0
    batches: int = 0
    records: int = 0  # records parsed in batches the worker finished (it polled again)
    parsed: int = 0  # records parsed in the batch in hand
    first_records_at: float | None = None
    first_records_cpu: float = 0.0
    last_commit_at: float | None = None
    last_commit_cpu: float = 0.0
    gc_timer: GcTimer | None = None  # reset when the first readings arrive


class TimedSource:
    """The consumer; also times each batch, from the poll that returned it to the next (a
    poll whose records were all held back for a restore is no batch: nothing was parsed)."""

    def __init__(self, source, timings: Timings) -> None:
        self._source = source
        self._t = timings
        self._returned_at: float | None = None  # of the last poll that returned records

    def _batch_done(self, now: float) -> None:
        if self._returned_at is not None and self._t.parsed:
            self._t.process += now - self._returned_at
            self._t.batches += 1
            self._t.records += self._t.parsed
            self._t.parsed = 0
        self._returned_at = None

    def poll(self, timeout_ms, max_records):
        started = time.perf_counter()
        self._batch_done(started)
        records = self._source.poll(timeout_ms, max_records)
        ended = time.perf_counter()
        # Inside the measured window only, which opens when the first readings come back:
        # the polls before wait for the group to form (the report's join_seconds).
        if self._t.first_records_at is not None:
            self._t.poll += ended - started
        if records:
            self._returned_at = ended
            if self._t.first_records_at is None:
                self._t.first_records_at = ended
                self._t.first_records_cpu = time.process_time()
                if self._t.gc_timer is not None:
                    self._t.gc_timer.reset()
        return records

    def commit(self, next_offsets) -> None:
        started = time.perf_counter()
        self._source.commit(next_offsets)
        ended = time.perf_counter()
        self._t.commit += ended - started
        self._t.last_commit_at = ended
        self._t.last_commit_cpu = time.process_time()

    def lag(self):
        return self._source.lag()

    def rewind(self, partitions) -> None:
        self._source.rewind(partitions)

    def pause(self, partitions) -> None:
        self._source.pause(partitions)

    def resume(self, partitions) -> None:
        self._source.resume(partitions)

    def group_metadata(self):
        return self._source.group_metadata()

    def close(self) -> None:
        self._batch_done(time.perf_counter())
        self._source.close()


class TimedSink:
    def __init__(self, sink, timings: Timings) -> None:
        self._sink = sink
        self._t = timings

    @property
    def transactional(self) -> bool:
        return self._sink.transactional

    def send(self, topic, key, value, headers=(), partition=None, best_effort=False) -> None:
        started = time.perf_counter()
        self._sink.send(topic, key, value, headers, partition, best_effort)
        self._t.send += time.perf_counter() - started

    def flush(self) -> int:
        started = time.perf_counter()
        dropped = self._sink.flush()
        self._t.flush += time.perf_counter() - started
        return dropped

    def commit_transaction(self, topic, next_offsets, group_metadata) -> None:
        started = time.perf_counter()
        self._sink.commit_transaction(topic, next_offsets, group_metadata)
        ended = time.perf_counter()
        self._t.commit += ended - started
        self._t.last_commit_at = ended
        self._t.last_commit_cpu = time.process_time()

    def abort_transaction(self) -> None:
        self._sink.abort_transaction()

    def close(self) -> None:
        self._sink.close()


class TimedParser:
    def __init__(self, parser, timings: Timings) -> None:
        self._parse = parser.parse
        self._check_key = parser.check_key
        self._t = timings

    def parse(self, raw, **options):
        started = time.perf_counter()
        parsed = self._parse(raw, **options)
        self._t.parse += time.perf_counter() - started
        self._t.parsed += 1
        return parsed

    def check_key(self, key, parsed):
        started = time.perf_counter()
        checked = self._check_key(key, parsed)
        self._t.parse += time.perf_counter() - started
        return checked


class TimedEngine:
    """The scoring engine; its ``process`` is timed (and the step inside it, as the engine
    itself reports), evictions are passed through."""

    def __init__(self, engine, timings: Timings) -> None:
        self._engine = engine
        self._t = timings

    def process(self, readings):
        started = time.perf_counter()
        result = self._engine.process(readings)
        self._t.engine += time.perf_counter() - started
        self._t.step += result.step_seconds
        return result

    def evict_idle(self, max_idle_s):
        return self._engine.evict_idle(max_idle_s)

    def evict_least_recent(self, max_streams):
        return self._engine.evict_least_recent(max_streams)


def timed_wrappers(timings: Timings, on_worker: Callable[[object], None]) -> PartWrappers:
    """Wrappers that time the source, sink, parser and engine into ``timings``;
    ``on_worker(worker)`` is told the worker once it is built."""
    # Imported here: the benchmark's child processes import this package without TensorFlow.
    from cellwatch.wiring import PartWrappers

    def worker(built):
        on_worker(built)
        return built

    return PartWrappers(source=lambda part: TimedSource(part, timings),
                        sink=lambda part: TimedSink(part, timings),
                        parser=lambda part: TimedParser(part, timings),
                        engine=lambda part: TimedEngine(part, timings),
                        worker=worker)
