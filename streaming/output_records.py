"""The scores and anomalies topics' record formats: written from the engine's results, read back.

Both are JSON objects, UTF-8, compact, keyed by the stream id (UTF-8), fields in this order:

* score (one per scored reading)::

    {"stream":"pump-7","ts":1706702400000,"score":1.234567,"likelihood":0.5,"surprise":0.30103,
     "onset":0,"flag":false,"top_channel":"pressure","model_version":"20240131-abc"}

* anomaly episode (one per episode, once it ended)::

    {"stream":"pump-7","start_ts":...,"peak_ts":...,"end_ts":...,"peak_score":41.5,
     "peak_likelihood":0.99999,"flagged_readings":3,"channels":["pressure"],
     "model_version":"20240131-abc"}

Numbers are written with seven significant digits (enough for a float32, and the same text
every time); a number that is not finite is written as ``null``: JSON has no NaN or
infinity, and a record carrying Python's ``inf`` or ``NaN`` literals would break strict
consumers. The readers give ``None`` for such a number.

The writers take the engine's typed results (:class:`~streaming.engine.ScoredReadings`,
:class:`~streaming.engine.EndedEpisode`); the readers return :class:`ScoreRecord` and
:class:`EpisodeRecord`, for consumers, tools and tests.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from json.encoder import encode_basestring_ascii as _json_string

from streaming.engine import EndedEpisode, ScoredReadings


def json_number(value: float) -> str:
    """A float as the records write it: seven significant digits, ``null`` if not finite."""
    value = float(value)
    return format(value, ".7g") if math.isfinite(value) else "null"


@functools.lru_cache(maxsize=16)
def _literals(channels: tuple[str, ...], model_version: str) -> tuple[list[str], str]:
    """JSON literals of the channel names and the model version, made once per model."""
    return [_json_string(name) for name in channels], _json_string(model_version)


def encode_scores(scores: ScoredReadings) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` score record of each scored reading, in order."""
    channel_json, version = _literals(scores.channels, scores.model_version)
    number = json_number
    out = []
    append = out.append
    for stream, when, s, p, q, o, f, top in zip(
            scores.streams, scores.ts_ms.tolist(), scores.score.tolist(),
            scores.likelihood.tolist(), scores.surprise.tolist(), scores.onset.tolist(),
            scores.flag.tolist(), scores.top_channel.tolist(), strict=True):
        # The stream's key and JSON literal are made per record, not cached per stream: the
        # C encoders take about 0.05 us a record together, no more than a cache lookup, and
        # a cache would hold memory for every stream ever seen.
        value = (f'{{"stream":{_json_string(stream)},"ts":{when},"score":{number(s)},'
                 f'"likelihood":{number(p)},"surprise":{number(q)},"onset":{number(o)},'
                 f'"flag":{"true" if f else "false"},"top_channel":{channel_json[top]},'
                 f'"model_version":{version}}}')
        append((stream.encode(), value.encode()))
    return out


def _number_or_none(value: float) -> float | None:
    """The value as :func:`json_number` writes it, for ``json.dumps``; None if not finite."""
    text = json_number(value)
    return None if text == "null" else float(text)


def encode_episode(ended: EndedEpisode) -> tuple[bytes, bytes]:
    """The ``(key, value)`` anomalies record of an ended episode."""
    episode = ended.episode
    event = {
        "stream": ended.stream,
        "start_ts": episode.start_ms,
        "peak_ts": episode.peak_ms,
        "end_ts": episode.end_ms,
        "peak_score": _number_or_none(episode.peak_score),
        "peak_likelihood": _number_or_none(episode.peak_likelihood),
        "flagged_readings": episode.flagged_readings,
        "channels": list(ended.channels),
        "model_version": ended.model_version,
    }
    return ended.stream.encode(), json.dumps(event, separators=(",", ":"),
                                             allow_nan=False).encode()


@dataclasses.dataclass(frozen=True, slots=True)
class ScoreRecord:
    """A score record as read from the scores topic."""

    stream: str
    ts: int
    score: float | None
    likelihood: float | None
    surprise: float | None
    onset: float | None
    flag: bool
    top_channel: str
    model_version: str


@dataclasses.dataclass(frozen=True, slots=True)
class EpisodeRecord:
    """An anomaly episode as read from the anomalies topic."""

    stream: str
    start_ts: int
    peak_ts: int
    end_ts: int
    peak_score: float | None
    peak_likelihood: float | None
    flagged_readings: int
    channels: tuple[str, ...]
    model_version: str


def _fields_of(value: bytes, kind: type) -> dict:
    record = json.loads(value)
    names = [field.name for field in dataclasses.fields(kind)]
    if not isinstance(record, dict) or list(record) != names:
        shown = list(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"not a {kind.__name__}: expected the fields {names}, "
                         f"received {shown}")
    return record


def read_score_record(value: bytes) -> ScoreRecord:
    """The score record of a scores topic record's value; ValueError if it is not one."""
    return ScoreRecord(**_fields_of(value, ScoreRecord))


def read_episode_record(value: bytes) -> EpisodeRecord:
    """The episode of an anomalies topic record's value; ValueError if it is not one."""
    record = _fields_of(value, EpisodeRecord)
    return EpisodeRecord(**{**record, "channels": tuple(record["channels"])})
