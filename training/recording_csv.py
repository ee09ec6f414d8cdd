"""CSV readers: long CSV, one-stream wide CSV, NAB data files and SKAB files.

Internal to :func:`training.recordings.read_recording`, which documents the formats.
"""

from __future__ import annotations

import csv

import numpy as np

from training.recording_parsing import (
    FLUSH_ROWS,
    CsvLayout,
    FileData,
    Part,
    Source,
    parse_labels,
    parse_timestamp_texts,
    parse_value_column,
    report_undecodable,
    show,
)
from training.recording_series import RESERVED_NAMES
from training.recording_skab import SKAB_DELIMITER, skab_layout

_CSV_EXPECTED = {
    "long-csv": "stream, timestamp, one or more channels and optionally label",
    "wide-csv": "timestamp, one or more channels and optionally label",
    "nab": "timestamp,value (a NAB data file)",
}


def _csv_layout(source: Source, header: list[str], kind: str,
                line: int) -> CsvLayout | None:
    """The columns of a CSV header (on ``line``), or None after reporting what is wrong."""
    names = [name.strip() for name in header]
    received = f"received {show(','.join(header), 120)}"
    expected = f"expected a header with {_CSV_EXPECTED[kind]}"
    before = source.problems.total
    for position, name in enumerate(names, 1):
        if not name:
            source.problem(line, None, f"column {position} has no name ({expected}, {received})")
    for name in dict.fromkeys(n for n in names if n and names.count(n) > 1):
        columns = [str(i) for i, n in enumerate(names, 1) if n == name]
        source.problem(line, f"column {name!r}",
                       f"appears more than once, as columns {', '.join(columns)} "
                       f"({expected}, {received})")
    required = ("stream", "timestamp") if kind == "long-csv" else ("timestamp",)
    missing = [name for name in required if name not in names]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        source.problem(line, None, f"missing column{plural} {', '.join(map(repr, missing))} "
                                f"({expected}, {received})")
    special = {"timestamp", "label"} | ({"stream"} if kind == "long-csv" else set())
    channels = [name for name in names if name and name not in special]
    for name in channels:
        if name in RESERVED_NAMES:
            source.problem(line, f"column {name!r}", f"reserved name, cannot be a channel "
                                                  f"({expected}, {received})")
    if not channels:
        source.problem(line, None, f"no channel columns ({expected}, {received})")
    if kind == "nab" and channels and channels != ["value"]:
        source.problem(line, None, f"not a NAB data file ({expected}, {received})")
    if source.problems.total > before:
        return None
    return CsvLayout(
        width=len(names),
        stream=names.index("stream") if kind == "long-csv" else None,
        timestamp=names.index("timestamp"),
        label=names.index("label") if "label" in names else None,
        channels=tuple(channels),
        channel_columns=tuple(names.index(name) for name in channels),
    )


def _csv_block(source: Source, layout: CsvLayout, rows: list[list[str]], lines: list[int],
               stream_id: str | None, parts: dict[str, list[Part]]) -> None:
    """Parse a block of rows column by column and add each stream's rows to ``parts``."""
    columns = list(zip(*rows, strict=True))
    count = len(rows)
    timestamps, ok = parse_timestamp_texts(source, columns[layout.timestamp], lines,
                                           f"column {layout.timestamp_name!r}")
    values = np.empty((count, len(layout.channels)), dtype=np.float64)
    bad = np.zeros((count, len(layout.channels)), dtype=bool)
    for j, (name, column) in enumerate(zip(layout.channels, layout.channel_columns,
                                           strict=True)):
        values[:, j], bad_cells = parse_value_column(source, columns[column], lines,
                                                      f"column {name!r}")
        if bad_cells is not None:
            bad[:, j] = bad_cells
    labels = None if layout.label is None else parse_labels(
        source, columns[layout.label], lines, layout.label_name, layout.numeric_labels)
    line_array = np.array(lines, dtype=np.int64)
    if layout.stream is None:
        groups = [(stream_id, np.flatnonzero(ok))]
    else:
        raw_ids = dict.fromkeys(columns[layout.stream])  # first-appearance order
        stripped = [raw.strip() for raw in raw_ids]
        ids = list(dict.fromkeys(stripped))
        position = {stream: i for i, stream in enumerate(ids)}
        code_of = {raw: position[stream] for raw, stream in zip(raw_ids, stripped, strict=True)}
        codes = np.fromiter(map(code_of.__getitem__, columns[layout.stream]), dtype=np.int64,
                            count=count)
        order = np.argsort(codes, kind="stable")
        bounds = np.cumsum(np.bincount(codes, minlength=len(ids)))[:-1]
        groups = []
        for stream, rows_of_stream in zip(ids, np.split(order, bounds), strict=True):
            if not stream:
                for index in rows_of_stream.tolist():
                    source.problem(lines[index], "column 'stream'",
                                   "empty (expected a stream id, received '')")
                continue
            groups.append((stream, rows_of_stream[ok[rows_of_stream]]))
    for stream, index in groups:
        if len(index) == 0:
            continue
        parts.setdefault(stream, []).append(Part(
            line_array[index], timestamps[index], values[index],
            None if labels is None else labels[index], bad[index].any(axis=0)))


def read_csv(source: Source, kind: str, stream_id: str | None) -> FileData | None:
    """Read a CSV file; ``kind`` is long-csv, wide-csv, nab, skab, or csv (decide from the
    header)."""
    data: FileData | None = None
    delimiter = SKAB_DELIMITER if kind == "skab" else ","
    line = 1
    problems_before = source.problems.total
    try:
        with open(source.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = next(reader, None)
            while header == []:
                header = next(reader, None)
            if header is None:
                source.problem(None, None, "empty file (expected a CSV header line, "
                                           "received no text)")
                return None
            if kind == "csv":
                kind = "long-csv" if "stream" in (h.strip() for h in header) else "wide-csv"
            layout = (skab_layout(source, header, reader.line_num) if kind == "skab"
                      else _csv_layout(source, header, kind, reader.line_num))
            if layout is None:
                return None
            data = FileData(source, layout.channels, layout.label is not None, "column",
                            layout.timestamp_name, drops_disorder=kind == "nab",
                            label_key=layout.label_name, kind=kind)
            rows: list[list[str]] = []
            lines: list[int] = []
            width = layout.width
            for row in reader:
                line = reader.line_num
                if len(row) != width:
                    if row:
                        source.problem(line, None, f"wrong number of fields (expected {width} "
                                                   f"as in the header, received {len(row)}: "
                                                   f"{show(delimiter.join(row))})")
                    continue
                rows.append(row)
                lines.append(line)
                if len(lines) >= FLUSH_ROWS:
                    _csv_block(source, layout, rows, lines, stream_id, data.parts)
                    rows, lines = [], []
            if rows:
                _csv_block(source, layout, rows, lines, stream_id, data.parts)
    except UnicodeDecodeError:
        report_undecodable(source)
        return None
    except OSError as exc:
        source.problem(None, None, f"cannot read the file ({exc.strerror or exc})")
        return None
    except csv.Error as exc:
        source.problem(line + 1, None, f"unreadable CSV ({exc})")
        return None
    if not data.parts and source.problems.total == problems_before:
        source.problem(None, None, "no readings (expected rows after the header, "
                                   "received none)")
    return data

