"""The exact streaming step: one reading for each of many streams, in one vectorized call.

Calling a Keras model once per reading costs milliseconds of framework overhead per call;
the worker instead gathers the readings of many streams and advances all of them with
:class:`StreamingStep`, whose arithmetic equals the Keras forecaster run over the same
sequences (tested to 1e-5) but runs as a handful of NumPy array operations.

A stream's results are a function of its own readings and the model alone: its matrix
products are exact (:mod:`detector.exact_product`) and everything else is element-wise, so
neither the other streams of a batch nor the CPU's BLAS kernels change a bit of them.

The math is written once, in :func:`advance`, against a small array-functions namespace, so
the NumPy step and the TensorFlow step exported as a SavedModel (:mod:`detector.export`)
evaluate the same formulas.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from detector.array_ops import NumpyOps
from detector.features import ChannelScaler
from detector.forecaster_step import StepParams, dependency_features, recur, with_exact_kernels
from detector.scorer import NORMALIZED_LIMIT, assess
from detector.scorer_config import ScorerConfig
from detector.state import COUNT_CAP, StateLayout


@dataclasses.dataclass(frozen=True)
class StepResult:
    """Per reading: raw score, likelihood in [0, 1], surprise, flag, most surprising channel."""

    score: np.ndarray  # float32 [B]
    likelihood: np.ndarray  # float32 [B]
    surprise: np.ndarray  # float32 [B], -log10(1 - likelihood), in [0, 30]
    flag: np.ndarray  # bool [B]
    top_channel: np.ndarray  # int32 [B]
    onset: np.ndarray  # float32 [B], the surprise where it tops the recent peak, else 0
    # (a reported surprise doubles the peak; see detector.scorer)


def advance(ops, params: StepParams, scaler_arrays, scorer: ScorerConfig, layout: StateLayout,
            values, timestamps_ms, state):
    """Scores one reading per stream and returns the streams' next state records.

    Args:
        ops: array functions (:class:`~detector.array_ops.NumpyOps` or the TensorFlow ones).
        params: the forecaster's weights.
        scaler_arrays: (median, scale, clip) of the channel normalization.
        scorer: likelihood settings.
        layout: where each field lives in a state record.
        values: raw readings ``[B, F]``.
        timestamps_ms: reading times ``[B]`` (int64 ms).
        state: state records ``[B, S]``, one per reading's stream.

    Returns:
        ``(score, likelihood, surprise, flag, top_channel, onset, new_state)``.
    """
    normalized, clipped, model_input, previous_1, previous_2 = model_inputs(
        ops, params, scaler_arrays, layout, values, timestamps_ms, state)
    week = ops.week_time(timestamps_ms) if params.uses_clock else None
    return advance_recurrent(
        ops, params, scorer, layout, normalized, clipped, ops.hour_of_day(timestamps_ms), week,
        lambda: dependency_features(ops, params, model_input, previous_1, previous_2), state)


def model_inputs(ops, params: StepParams, scaler_arrays, layout: StateLayout, values,
                 timestamps_ms, state):
    """The readings normalized, and the model's inputs of them and of the two readings before
    them (as ``state`` holds those): the part of :func:`advance` that the recurrence does not
    feed.

    Returns:
        ``(normalized, clipped, model_input, previous_1, previous_2)``, each ``[B, .]``.
    """
    median, scale, clip = scaler_arrays
    f = layout.fields
    normalized = ops.clip((values - median) / scale, -NORMALIZED_LIMIT, NORMALIZED_LIMIT)
    clipped = ops.clip(normalized, -clip, clip)
    count = state[:, f["count"]]
    # The two readings before this one, as the model saw them (zeros before there were any):
    # the record keeps their values and their time in the week, and their clock encodings
    # are computed again here with this reading's, in one product.
    previous_1 = state[:, f["reading_t1"]]
    previous_2 = state[:, f["reading_t2"]]
    model_input = clipped
    if params.uses_clock:
        times = ops.concat([timestamps_ms, ops.from_week_time(state[:, f["week_time_t1"]]),
                            ops.from_week_time(state[:, f["week_time_t2"]])], axis=0)
        encoded = ops.sin(params.clock_frequency * (
            ops.matmul(ops.clock(times), params.clock_kernel) + params.clock_bias))
        batch = ops.rows(clipped)
        model_input = ops.concat([clipped, encoded[:batch]], axis=-1)
        previous_1 = ops.concat([previous_1, encoded[batch:2 * batch]], axis=-1)
        previous_2 = ops.concat([previous_2, encoded[2 * batch:]], axis=-1)
    previous_1 = ops.where(count >= 1.0, previous_1, 0.0)
    previous_2 = ops.where(count >= 2.0, previous_2, 0.0)
    return normalized, clipped, model_input, previous_1, previous_2


def advance_recurrent(ops, params: StepParams, scorer: ScorerConfig, layout: StateLayout,
                      normalized, clipped, hours, week, features, state):
    """The recurrent part of :func:`advance`: scores each reading against its stream's
    record and advances the record, given what :func:`model_inputs` made of the reading,
    ``hours`` (its hour of the day), ``week`` (its :func:`~detector.features.week_time`,
    ``None`` without a clock) and ``features``, a function giving its
    :func:`~detector.forecaster_step.dependency_features`.

    ``features`` is called after the scorer, not before: at a batch of 1,024 rows, holding
    the features through the scorer's temporaries made glibc return heap memory to the
    system and fault it in again on every call (1,032 page faults a call, 1.75x slower).
    """
    f = layout.fields
    # Score this reading against what the state expected of it ...
    score, likelihood, surprise, flag, top_channel, onset, statistics = assess(
        ops, scorer, layout, normalized, clipped, hours, state)
    # ... then let the forecaster expect the next one.
    new_memory, change, forecast_scale = recur(ops, params, features(),
                                               state[:, f["memory"]])
    # The model forecasts the change to the next reading; persistence is its zero point.
    forecast_mean = normalized + change

    history = [clipped]
    if params.uses_clock:
        history.append(week)
    history.append(state[:, f["reading_t1"]])
    if params.uses_clock:
        history.append(state[:, f["week_time_t1"]])
    new_state = ops.concat([
        *history, new_memory, forecast_mean, forecast_scale, *statistics,
        ops.minimum(state[:, f["count"]] + 1.0, COUNT_CAP),
    ], axis=-1)
    return score, likelihood, surprise, flag, top_channel, onset, new_state


@dataclasses.dataclass(frozen=True)
class PreparedReadings:
    """What the step made of a batch's readings before their streams' recurrence runs
    (:meth:`StreamingStep.prepare`), row ``j`` for reading ``j``."""

    normalized: np.ndarray  # float32 [N, F]
    clipped: np.ndarray  # float32 [N, F]
    hours: np.ndarray  # int32 [N]
    week: np.ndarray | None  # float32 [N, 2], None without a clock
    features: np.ndarray  # float32 [N, U], the dependency layer's output


# The fields of a record that model_inputs reads.
_INPUT_FIELDS = ("reading_t1", "week_time_t1", "reading_t2", "week_time_t2", "count")


@dataclasses.dataclass(frozen=True)
class _FixedLayout:
    """A layout's fields and channels, looked up once: :attr:`StateLayout.fields` builds its
    dict anew on every access, which costs a one-row step call several microseconds."""

    fields: dict[str, slice]
    channels: int


class StreamingStep:
    """Advances many streams by one reading each, with NumPy.

    Args:
        params: the forecaster's weights (:func:`detector.model.step_params`).
        scaler: the channel normalization fitted at training time.
        scorer: likelihood and flag settings.

    Call arguments:
        values: float ``[B, F]`` raw readings, finite, one per stream, in channel order.
        timestamps_ms: int64 ``[B]`` reading times (the clock and the season test use them).
        state: float32 ``[B, S]`` the streams' records (``layout.initial(B)`` for new ones).

    Returns:
        ``(StepResult, new_state)``; ``new_state`` is a new array, ``state`` is not modified.

    Example:
        >>> from detector.model import ForecasterConfig, build_forecaster, step_params
        >>> model = build_forecaster(ForecasterConfig(
        ...     channels=2, time_features=False, dependency_units=4, memory_units=4,
        ...     hidden_units=4))
        >>> history = np.random.default_rng(0).normal(size=(3, 50, 2))  # [streams, time, F]
        >>> step = StreamingStep(step_params(model), ChannelScaler.fit(history), ScorerConfig())
        >>> state = step.layout.initial(2)  # two new streams
        >>> now_ms = np.array([1_700_000_000_000, 1_700_000_000_000])
        >>> result, state = step(np.array([[0.1, -0.3], [2.0, 0.5]]), now_ms, state)
        >>> result.flag  # a new stream never flags during its learning period
        array([False, False])
        >>> state.shape == (2, step.layout.size)
        True
    """

    # Rows advanced per NumPy pass; measured best on this machine (benchmarks/step_throughput).
    chunk = 2048

    def __init__(self, params: StepParams, scaler: ChannelScaler, scorer: ScorerConfig) -> None:
        if scaler.channels != params.channels:
            raise ValueError(
                f"normalization has {scaler.channels} channels but the model forecasts "
                f"{params.channels}")
        self.params = params
        self.scaler = scaler
        self.scorer = scorer
        self.layout = StateLayout(channels=params.channels, input_width=params.input_width,
                                  memory_units=params.memory_units)
        # The products' weights as exact integers, converted once rather than per batch.
        self._exact_params = with_exact_kernels(params, scaler.clip)
        self._scaler_arrays = (np.asarray(scaler.median, np.float32),
                               np.asarray(scaler.scale, np.float32),
                               np.float32(scaler.clip))
        self._fields = _FixedLayout(self.layout.fields, self.layout.channels)
        # The fields of a record that model_inputs reads, and where they sit once gathered.
        inputs = [(name, self._fields.fields[name]) for name in _INPUT_FIELDS]
        self._input_columns = np.concatenate([np.arange(where.start, where.stop)
                                              for _, where in inputs])
        ends = np.cumsum([where.stop - where.start for _, where in inputs]).tolist()
        self._input_fields = _FixedLayout(
            {name: slice(end - (where.stop - where.start), end)
             for (name, where), end in zip(inputs, ends, strict=True)}, self.layout.channels)

    def __call__(self, values: np.ndarray, timestamps_ms: np.ndarray | None,
                 state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        self.layout.check(state)
        values, timestamps_ms = self._checked(values, timestamps_ms, state.shape[0])
        batch = values.shape[0]
        if batch <= self.chunk:
            return self._advance(values, timestamps_ms, state)
        # Beyond a few thousand rows the temporaries leave the CPU cache; chunks keep them in.
        return self._joined([self._advance(values[i:i + self.chunk],
                                           timestamps_ms[i:i + self.chunk],
                                           state[i:i + self.chunk])
                             for i in range(0, batch, self.chunk)])

    def prepare(self, values: np.ndarray, timestamps_ms: np.ndarray, records: np.ndarray,
                streams: np.ndarray, previous: np.ndarray) -> PreparedReadings:
        """Everything of a batch's readings that their streams' recurrence does not feed, for
        all of them at once: normalization, clock encodings, the dependency layer.

        A batch with several readings of a stream advances it in rounds, one reading per
        call (:meth:`advance_prepared`); this spares each round what can be done once for
        the batch. Every row's arithmetic is the row step's: products are exact and the
        rest is element-wise, so the results are the same bits as :meth:`__call__`'s.

        Args:
            values, timestamps_ms: the batch's readings, ``[N, F]`` and ``[N]``.
            records: ``[R, S]`` records (the state store's table): ``records[streams[j]]`` is
                reading ``j``'s stream's record before the batch. Only the fields of the
                previous readings and the count are read, so the table is not copied.
            streams: int ``[N]``, see ``records``.
            previous: int ``[N]``, the row of the same stream's reading just before reading
                ``j`` in this batch, or -1 for a stream's first reading of the batch.
        """
        self.layout.check(records)
        streams = np.asarray(streams, dtype=np.int64)
        values, timestamps_ms = self._checked(values, timestamps_ms, streams.shape[0])
        previous = np.asarray(previous, dtype=np.int64)
        if previous.shape != timestamps_ms.shape:
            raise ValueError(f"previous: expected [{values.shape[0]}], received "
                             f"{list(previous.shape)}")
        params = self._exact_params
        # The few fields model_inputs reads, gathered alone: whole records of a large batch
        # are tens of megabytes to copy.
        inputs_state = records[streams[:, None], self._input_columns]
        # In chunks, as __call__ does: beyond a few thousand rows the temporaries (the clock
        # encodings, the products' integers) leave the CPU cache.
        chunks = [slice(i, i + self.chunk) for i in range(0, max(values.shape[0], 1), self.chunk)]
        normalized, clipped, model_input, previous_1, previous_2 = (
            np.concatenate(parts) for parts in zip(*(model_inputs(
                NumpyOps, params, self._scaler_arrays, self._input_fields, values[rows],
                timestamps_ms[rows], inputs_state[rows]) for rows in chunks), strict=True))
        # A reading after another of its stream in this batch sees that one's input (which
        # is what the record would hold of it by then); before that, the record's inputs.
        has_1 = previous >= 0
        before = np.where(has_1, previous[previous], -1)  # row -1 wherever masked out
        has_2 = before >= 0
        previous_2 = np.where(has_2[:, None], model_input[before],
                              np.where(has_1[:, None], previous_1, previous_2))
        previous_1 = np.where(has_1[:, None], model_input[previous], previous_1)
        features = np.concatenate([dependency_features(
            NumpyOps, params, model_input[rows], previous_1[rows], previous_2[rows])
            for rows in chunks])
        return PreparedReadings(normalized, clipped, NumpyOps.hour_of_day(timestamps_ms),
                                NumpyOps.week_time(timestamps_ms) if params.uses_clock
                                else None, features)

    def advance_prepared(self, prepared: PreparedReadings, rows: slice,
                         state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        """Advances the streams of the readings ``prepared[rows]`` (one per stream, each
        after its stream's earlier readings of the batch) from their records ``state``, as
        :meth:`__call__` would; ``rows`` is a slice, so the rows are views, not copies."""
        start, stop, stride = rows.indices(prepared.normalized.shape[0])
        if stride != 1 or stop - start != state.shape[0]:
            raise ValueError(f"rows: expected a slice of {state.shape[0]} rows in a row, "
                             f"received {rows}")
        self.layout.check(state)
        if stop - start <= self.chunk:
            return self._advance_recurrent(prepared, rows, state)
        return self._joined([self._advance_recurrent(
            prepared, slice(i, min(i + self.chunk, stop)), state[i - start:i - start + self.chunk])
            for i in range(start, stop, self.chunk)])

    def _checked(self, values, timestamps_ms, records: int) -> tuple[np.ndarray, np.ndarray]:
        """``values`` and ``timestamps_ms`` as arrays, checked against ``records``, the number
        of state records given for them."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != self.layout.channels:
            raise ValueError(
                f"values: expected [batch, {self.layout.channels}], received "
                f"{list(values.shape)}")
        if records != values.shape[0]:
            raise ValueError(
                f"state: expected one record per reading ({values.shape[0]}), received "
                f"{records}")
        if timestamps_ms is None:
            raise ValueError("timestamps_ms: the step needs each reading's time")
        timestamps_ms = np.asarray(timestamps_ms, dtype=np.int64)
        if timestamps_ms.shape != (values.shape[0],):
            raise ValueError(f"timestamps_ms: expected [{values.shape[0]}], received "
                             f"{list(timestamps_ms.shape)}")
        return values, timestamps_ms

    def _advance(self, values: np.ndarray, timestamps_ms: np.ndarray,
                 state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        return self._typed(advance(NumpyOps, self._exact_params, self._scaler_arrays,
                                   self.scorer, self._fields, values, timestamps_ms, state))

    def _advance_recurrent(self, prepared: PreparedReadings, rows: slice,
                           state: np.ndarray) -> tuple[StepResult, np.ndarray]:
        return self._typed(advance_recurrent(
            NumpyOps, self._exact_params, self.scorer, self._fields, prepared.normalized[rows],
            prepared.clipped[rows], prepared.hours[rows],
            None if prepared.week is None else prepared.week[rows],
            lambda: prepared.features[rows], state))

    @staticmethod
    def _typed(outputs) -> tuple[StepResult, np.ndarray]:
        score, likelihood, surprise, flag, top, onset, new_state = outputs
        return (StepResult(score.astype(np.float32), likelihood.astype(np.float32),
                           surprise.astype(np.float32), np.asarray(flag, dtype=bool), top,
                           onset.astype(np.float32)),
                new_state.astype(np.float32, copy=False))

    @staticmethod
    def _joined(parts) -> tuple[StepResult, np.ndarray]:
        results = [part[0] for part in parts]
        return (StepResult(*(np.concatenate([getattr(r, f.name) for r in results])
                             for f in dataclasses.fields(StepResult))),
                np.concatenate([part[1] for part in parts]))
