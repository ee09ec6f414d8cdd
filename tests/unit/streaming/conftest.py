"""Shared pieces of the streaming unit tests: a small model's step and in-memory ports.

The step is built like ``tests/unit/detector/conftest.py`` builds one (a tiny forecaster with
random weights), once per session; Keras is imported only when a test asks for a step, so the
other test modules of this folder do not pay for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import pytest

from detector.scorer_config import ScorerConfig
from detector.step import StreamingStep
from streaming import worker as worker_module
from streaming.engine import BatchResult, Reading, ScoringEngine
from streaming.messages import reading_message
from streaming.output_records import encode_episode, encode_scores
from streaming.ports import OutputError

CHANNELS = ("temperature", "pressure", "flow")
MODEL_VERSION = "test-model-1"
T0_MS = 1_706_702_400_000  # 2024-01-31T12:00:00Z
STEP_MS = 60_000

# Learns fast and flags readily, so a few dozen readings exercise flags and episodes.
FAST_SCORER = ScorerConfig(learning_period=5, history=12, threshold=0.9, average_span=4)


@dataclasses.dataclass(frozen=True)
class ModelParts:
    params: object  # detector.step.StepParams
    scaler: object  # detector.features.ChannelScaler
    values: np.ndarray  # [streams, steps, channels] a recording in the scaler's units

    def step(self, scorer: ScorerConfig = FAST_SCORER) -> StreamingStep:
        return StreamingStep(self.params, self.scaler, scorer)


@pytest.fixture(scope="session")
def model_parts() -> ModelParts:
    # Imported here: Keras and TensorFlow take seconds to import.
    from detector.model import step_params
    from tests.unit.detector.conftest import make_model, make_recording, scaler_for

    _, model = make_model(time_features=True)
    recording = make_recording(streams=6, steps=60, channels=len(CHANNELS))
    return ModelParts(step_params(model), scaler_for(recording), recording.values)


@pytest.fixture(scope="session")
def step(model_parts: ModelParts) -> StreamingStep:
    return model_parts.step()


@pytest.fixture(scope="session")
def recorded(model_parts: ModelParts) -> np.ndarray:
    """Raw readings ``[streams, steps, channels]`` in the scale the model was normalized to."""
    return model_parts.values


def score_records(result: BatchResult) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` score records the worker publishes for ``result``."""
    return encode_scores(result.scores)


def episode_records(result: BatchResult) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` anomaly records the worker publishes for ``result``."""
    return [encode_episode(ended) for ended in result.episodes]


def rejected_positions(readings: Sequence[Reading], result: BatchResult) -> list[int]:
    """Where in ``readings`` each reading the engine rejected was (rejections carry the
    reading itself)."""
    return [next(index for index, reading in enumerate(readings) if reading is rejected.reading)
            for rejected in result.rejected]


def minutes(*values: int) -> list[int]:
    """Epoch ms of the given minutes after ``T0_MS``."""
    return [T0_MS + m * STEP_MS for m in values]


class ScriptedStep:
    """The real step, but flags, scores and top channels as a script says (by reading time).

    ``script`` maps ts_ms to (score, top channel index); listed readings are flagged with
    likelihood 0.9995, all others are unflagged with score 0.5 and likelihood 0.5. The state
    still advances through the real step.
    """

    def __init__(self, step: StreamingStep, script: dict[int, tuple[float, int]]) -> None:
        self.step = step
        self.layout = step.layout
        self.script = script

    def __call__(self, values, timestamps_ms, state):
        result, new_state = self.step(values, timestamps_ms, state)
        scripted = [self.script.get(int(ts)) for ts in timestamps_ms]
        flag = np.array([entry is not None for entry in scripted])
        score = np.array([entry[0] if entry else 0.5 for entry in scripted], np.float32)
        top = np.array([entry[1] if entry else 0 for entry in scripted], np.int32)
        likelihood = np.where(flag, np.float32(0.9995), np.float32(0.5)).astype(np.float32)
        return dataclasses.replace(result, score=score, likelihood=likelihood, flag=flag,
                                   top_channel=top), new_state


def readings_of(values: np.ndarray, streams: Sequence[str] | None = None, *,
                partition: int = 0, first_offset: int = 0, t0_ms: int = T0_MS
                ) -> list[Reading]:
    """Readings of ``values[stream, step, channel]`` merged in time order, with offsets."""
    count, steps, _ = values.shape
    names = list(streams) if streams is not None else [f"stream-{s}" for s in range(count)]
    out = []
    for t in range(steps):
        for s in range(count):
            out.append(Reading(names[s], t0_ms + t * STEP_MS, values[s, t].astype(np.float32),
                               partition, first_offset + len(out)))
    return out


# Deliberate durability faults ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DurabilityFault:
    """One reading the engine mishandles, every time it processes it.

    ``kind`` is ``"drop"`` (never applied nor scored, yet counted as handled, so the worker
    commits its offset: a lost reading) or ``"apply_twice"`` (scored once, but applied twice
    to its stream's state: a reading applied twice).
    """

    kind: str
    stream: str
    ts_ms: int

    def __post_init__(self) -> None:
        if self.kind not in ("drop", "apply_twice"):
            raise ValueError(f"kind: expected 'drop' or 'apply_twice', received {self.kind!r}")


class FaultyEngine(ScoringEngine):
    """The real scoring engine with one :class:`DurabilityFault`, to show that a durability
    check catches a lost or doubly applied reading. A test puts it in place of the worker's
    engine (``worker.engine``); everything else is the real path."""

    def __init__(self, *args, fault: DurabilityFault, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fault = fault

    def process(self, readings: Sequence[Reading]) -> BatchResult:
        fault = self.fault
        target = next((i for i, r in enumerate(readings)
                       if r.stream == fault.stream and r.ts_ms == fault.ts_ms), None)
        if target is None:
            return super().process(readings)
        if fault.kind == "drop":
            result = super().process([*readings[:target], *readings[target + 1:]])
            result.skipped += 1  # as a broken "already applied" check would count it
            return result
        real_step = self.step
        self.step = _ApplyingTwice(real_step, readings[target])
        try:
            return super().process(readings)
        finally:
            self.step = real_step


class _ApplyingTwice:
    """The real step; the round holding ``reading`` applies it a second time to its stream's
    state, right after the application that scored it."""

    def __init__(self, step: StreamingStep, reading: Reading) -> None:
        self.step = step
        self.layout = step.layout
        self.reading = reading

    def __call__(self, values, timestamps_ms, state):
        result, new_state = self.step(values, timestamps_ms, state)
        matches = np.flatnonzero((np.asarray(timestamps_ms) == self.reading.ts_ms)
                                 & np.all(np.asarray(values) == self.reading.values, axis=1))
        for i in matches.tolist():
            _, again = self.step(values[i:i + 1], timestamps_ms[i:i + 1], new_state[i:i + 1])
            new_state[i] = again[0]
        return result, new_state


# In-memory ports ----------------------------------------------------------------------------


@dataclasses.dataclass
class FakeRecord:
    """A consumed record, shaped like kafka-python's ConsumerRecord."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = dataclasses.field(default_factory=list)


def record_of(reading: Reading, topic: str = "readings", channels: Sequence[str] = CHANNELS,
              headers: Sequence[tuple[str, bytes]] = ()) -> FakeRecord:
    """The record a producer would have written for ``reading`` (offset and partition kept)."""
    return FakeRecord(topic, reading.partition, reading.offset, reading.ts_ms + 5,
                      reading.stream.encode(),
                      reading_message(reading.stream, reading.ts_ms, reading.values.tolist(),
                                      channels),
                      list(headers))


class FakeReadingSource:
    """Hands out the given records in order, ``max_records`` at a time; records commits.

    Args:
        records: everything the source will ever return.
        events: optional shared log; ``("commit", offsets)`` is appended on each commit.
        when_empty: called by a poll that finds nothing left (tests set a stop event there).
        lags: what :meth:`lag` reports.

    Set ``fail_commit`` to an exception to make commits raise it (and record nothing).
    """

    def __init__(self, records: Sequence[FakeRecord], events: list | None = None,
                 when_empty: Callable[[], None] | None = None,
                 lags: Mapping[int, int] | None = None) -> None:
        self._pending = list(records)
        self.events = events if events is not None else []
        self.when_empty = when_empty
        self.lags = dict(lags or {})
        self.commits: list[dict[int, int]] = []
        self.polls: list[tuple[int, int]] = []
        self.fail_commit: Exception | None = None
        self.closed = False

    def poll(self, timeout_ms: int, max_records: int) -> list[FakeRecord]:
        assert not self.closed, "poll after close"
        self.polls.append((timeout_ms, max_records))
        batch, self._pending = self._pending[:max_records], self._pending[max_records:]
        if not batch and self.when_empty is not None:
            self.when_empty()
        return batch

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        if self.fail_commit is not None:
            raise self.fail_commit
        self.commits.append(dict(next_offsets))
        self.events.append(("commit", dict(next_offsets)))

    def lag(self) -> dict[int, int]:
        return dict(self.lags)

    def group_metadata(self) -> object:
        return "group-metadata"

    def rewind(self, partitions: Sequence[int]) -> None:
        self.events.append(("rewind", list(partitions)))

    def pause(self, partitions: Sequence[int]) -> None:
        self.events.append(("pause", list(partitions)))

    def resume(self, partitions: Sequence[int]) -> None:
        self.events.append(("resume", list(partitions)))

    def close(self) -> None:
        self.closed = True


@dataclasses.dataclass(frozen=True)
class SentRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int | None = None  # None: the key chooses
    best_effort: bool = False


def record_size(record: SentRecord) -> int:
    """Key, value and header bytes of a record (what a broker's size limit counts, less
    the framing)."""
    return (len(record.key or b"") + len(record.value or b"")
            + sum(len(name) + len(value) for name, value in record.headers))


class FakeRecordSink:
    """Stores sent records; :meth:`flush` acknowledges them or, if told to, fails.

    Args:
        events: optional shared log; ``("flush", records sent so far)`` is appended on each
            successful flush, ``("transaction", records sent so far, offsets)`` on each
            transaction commit.
        transactional: whether it acts as a transactional sink.

    Set ``refuse_larger_than`` to a size to make the broker refuse, for good, records whose
    key, value and headers add up to more: a best-effort record is then dropped (counted by
    the flush), any other fails the flush.
    """

    def __init__(self, events: list | None = None, transactional: bool = False) -> None:
        self.transactional = transactional
        self.transactions: list[dict[int, int]] = []
        self.sent: list[SentRecord] = []
        self.acknowledged = 0  # records covered by the last successful flush
        self.flushes = 0
        self.fail_flush: OutputError | None = None
        self.refuse_larger_than: int | None = None
        self.dropped: list[SentRecord] = []
        self.events = events if events is not None else []
        self.closed = False

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None,
             best_effort: bool = False) -> None:
        assert not self.closed, "send after close"
        self.sent.append(SentRecord(topic, key, value, tuple(headers), partition, best_effort))

    def flush(self) -> int:
        self.flushes += 1
        if self.fail_flush is not None:
            raise self.fail_flush
        dropped = 0
        if self.refuse_larger_than is not None:
            refused = [r for r in self.sent[self.acknowledged:]
                       if record_size(r) > self.refuse_larger_than]
            if any(not r.best_effort for r in refused):
                raise OutputError(f"MessageSizeTooLargeError: {len(refused)} records")
            self.dropped.extend(refused)
            self.sent = [r for r in self.sent if all(r is not x for x in refused)]
            dropped = len(refused)
        self.acknowledged = len(self.sent)
        self.events.append(("flush", len(self.sent)))
        return dropped

    def commit_transaction(self, topic: str, next_offsets: Mapping[int, int],
                           group_metadata: object) -> None:
        assert self.transactional and group_metadata == "group-metadata"
        self.transactions.append(dict(next_offsets))
        self.events.append(("transaction", len(self.sent), dict(next_offsets)))

    def abort_transaction(self) -> None:
        assert self.transactional
        self.events.append(("abort", len(self.sent)))

    def close(self) -> None:
        self.closed = True

    def on(self, topic: str) -> list[SentRecord]:
        return [record for record in self.sent if record.topic == topic]


class FakeChangelogReader:
    """Reads the changelog records a :class:`FakeRecordSink` had acknowledged, as a
    compacted topic would hold them (before compaction: every version, in order)."""

    def __init__(self, sink: FakeRecordSink, topic: str) -> None:
        self.sink = sink
        self.topic = topic
        self.reads: list[list[int]] = []

    def read(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        self.reads.append(list(partitions))
        for record in self.sink.sent[:self.sink.acknowledged]:
            if record.topic == self.topic and record.partition in partitions:
                yield record.partition, record.key, record.value

    def close(self) -> None:
        pass


@pytest.fixture
def fake_monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The worker's checkpoint timer, frozen: a test (or a fake source's polls) advances
    it by hand."""
    now = [1000.0]
    monkeypatch.setattr(worker_module.time, "monotonic", lambda: now[0])
    return now
