"""SKAB's files as published (the Skoltech Anomaly Benchmark, waico/SKAB).

One file is one experiment of the test rig and one stream: ``;``-separated, a header row,
``datetime`` (``YYYY-MM-DD hh:mm:ss``), the sensor channels (names may contain spaces, as in
``Volume Flow RateRMS``), then ``anomaly`` (1 while the fault lasts, written ``0.0``/``1.0``)
and ``changepoint``. The stream id is the file's path relative to the folder given
(``valve1/0.csv``), or its name when a file is given.

``anomaly`` is read as the label; a file without it (SKAB's ``anomaly-free.csv``, the rig in
normal operation) is unlabeled. ``changepoint`` is ignored by name: it marks where a fault
starts and ends for SKAB's change-point task, not which readings are anomalous.

Internal to :func:`training.recordings.read_recording`, which reads these files with
``format="skab"``, and under ``auto`` recognizes them by their header (:func:`looks_like_skab`).
"""

from __future__ import annotations

from pathlib import Path

from training.recording_parsing import CsvLayout, Source, show
from training.recording_series import RESERVED_NAMES

SKAB_DELIMITER = ";"
SKAB_TIME_COLUMN = "datetime"
SKAB_LABEL_COLUMN = "anomaly"
SKAB_IGNORED_COLUMNS = frozenset({"changepoint"})
_EXPECTED = (f"expected a SKAB header: {SKAB_TIME_COLUMN};<channels>;{SKAB_LABEL_COLUMN};"
             f"changepoint, ;-separated, {SKAB_LABEL_COLUMN} and changepoint optional")


def looks_like_skab(path: Path) -> bool:
    """Whether ``path`` starts with a SKAB header: ``datetime;`` and more columns."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            first_line = handle.readline(4096)
    except (OSError, UnicodeDecodeError):
        return False  # not SKAB then; the reader chosen instead reports what is wrong
    fields = first_line.split(SKAB_DELIMITER)
    return len(fields) > 1 and fields[0].strip() == SKAB_TIME_COLUMN


def skab_layout(source: Source, header: list[str], line: int) -> CsvLayout | None:
    """The columns of a SKAB header (on ``line``), or None after reporting what is wrong."""
    # Only the ends are stripped: inner spaces belong to channel names.
    names = [name.strip() for name in header]
    received = f"received {show(SKAB_DELIMITER.join(header), 160)}"
    before = source.problems.total
    for position, name in enumerate(names, 1):
        if not name:
            source.problem(line, None, f"column {position} has no name ({_EXPECTED}, "
                                       f"{received})")
    for name in dict.fromkeys(n for n in names if n and names.count(n) > 1):
        columns = [str(i) for i, n in enumerate(names, 1) if n == name]
        source.problem(line, f"column {name!r}", f"appears more than once, as columns "
                                                 f"{', '.join(columns)} ({_EXPECTED}, {received})")
    if SKAB_TIME_COLUMN not in names:
        hint = (" (this header has no ';': SKAB files are ;-separated)"
                if len(names) == 1 else "")
        source.problem(line, None, f"missing column {SKAB_TIME_COLUMN!r}{hint} ({_EXPECTED}, "
                                   f"{received})")
    special = {SKAB_TIME_COLUMN, SKAB_LABEL_COLUMN} | SKAB_IGNORED_COLUMNS
    channels = [name for name in names if name and name not in special]
    for name in channels:
        if name in RESERVED_NAMES:
            source.problem(line, f"column {name!r}", f"reserved name, cannot be a channel "
                                                  f"({_EXPECTED}, {received})")
    if not channels and SKAB_TIME_COLUMN in names:
        source.problem(line, None, f"no channel columns ({_EXPECTED}, {received})")
    if source.problems.total > before:
        return None
    return CsvLayout(
        width=len(names),
        stream=None,
        timestamp=names.index(SKAB_TIME_COLUMN),
        label=names.index(SKAB_LABEL_COLUMN) if SKAB_LABEL_COLUMN in names else None,
        channels=tuple(channels),
        channel_columns=tuple(names.index(name) for name in channels),
        timestamp_name=SKAB_TIME_COLUMN,
        label_name=SKAB_LABEL_COLUMN,
        numeric_labels=True,
    )
