"""The evaluation report as text: a few lines for people, from the report's dictionary only.

Every figure printed comes from the dictionary that ``cellwatch evaluate --json`` prints and
``evaluation.json`` holds, so the two never disagree; each F1 line names its detection rule
(the ``rule`` the metric carries), since the same word means different things per line.
"""

from __future__ import annotations

import json
import math


def _finite(value):
    """The report with every non-finite float as None (JSON has no NaN or infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def report_json(report: dict) -> str:
    """The report as strict JSON: a figure that is undefined (a NAB score over no windows is
    NaN) is ``null``, never the ``NaN`` token that JSON parsers reject."""
    return json.dumps(_finite(report), indent=2, allow_nan=False)



def _fixed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _protocol_line(report: dict) -> str:
    protocol = report.get("protocol", "artifact")
    line = (f"protocol {protocol}: {report['streams']} streams, {report['readings']} readings, "
            f"{report['evaluated_readings']} evaluated")
    if protocol == "skab":
        line += f" (the first {report['train_readings']} of each stream trained its model)"
    elif protocol == "nab":
        line += " (each file's model trained on its probationary period)"
    return line


def _detection_lines(report: dict) -> list[str]:
    point, baseline = report["pointwise"], report["all_flag_baseline"]
    auc, window = report["roc_auc"], report["windowwise"]
    return [
        f"labelled anomalous: {report['labeled_readings']} of the {report['evaluated_readings']} "
        f"evaluated readings",
        f"point-wise F1 {_fixed(point['f1'])} ({point['rule']}): precision "
        f"{_fixed(point['precision'])} recall {_fixed(point['recall'])} "
        f"(TP {point['true_positives']}, FP {point['false_positives']}, "
        f"FN {point['false_negatives']})",
        f"all-flag baseline F1 {_fixed(baseline['f1'])} ({baseline['rule']}): precision "
        f"{_fixed(baseline['precision'])} recall {_fixed(baseline['recall'])}",
        f"ROC AUC {_fixed(auc['auc'])} ({auc['rule']})",
        f"window-wise F1 {_fixed(window['f1'])} ({window['rule']}): precision "
        f"{_fixed(window['precision'])} recall {_fixed(window['recall'])} "
        f"(windows {window['windows']}, found {window['windows_found']}; "
        f"episodes {window['episodes']}, correct {window['episodes_correct']})",
    ]


_STREAM_COLUMNS = ("evaluated", "labelled", "flagged", "precision", "recall", "F1",
                   "all-flag F1", "ROC AUC", "windows found")


def _per_stream_lines(per_stream: dict) -> list[str]:
    rows = [(stream, str(m["evaluated_readings"]), str(m["labeled_readings"]),
             str(m["flagged_readings"]), _fixed(m["precision"]), _fixed(m["recall"]),
             _fixed(m["f1"]), _fixed(m["all_flag_f1"]), _fixed(m["roc_auc"]),
             f"{m['windows_found']}/{m['windows']}")
            for stream, m in per_stream.items()]
    header = ("stream", *_STREAM_COLUMNS)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["per stream (evaluated readings only, point-wise rule as above):"] + [
        "  " + "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                         for i, cell in enumerate(row))
        for row in [header, *rows]]


def report_lines(report: dict) -> list[str]:
    """The text report of an evaluation report dictionary."""
    lines = [_protocol_line(report)]
    if "pointwise" in report:
        lines += _detection_lines(report)
    else:
        lines.append(f"no labels: {report['flagged_readings']} of {report['readings']} "
                     f"readings flagged (flag = likelihood >= {report['threshold']:g})")
    if report.get("by_kind"):
        lines.append("anomalies found by kind (a flag inside the labelled anomaly): " + ", ".join(
            f"{kind} {counts['found']}/{counts['anomalies']}"
            for kind, counts in report["by_kind"].items()))
    for name, result in report.get("nab", {}).items():
        lines.append(f"NAB {name}: {result['normalized']:.1f} (threshold "
                     f"{result['threshold']:.4f})")
    if "nab_results" in report:
        results = report["nab_results"]
        lines.append(f"NAB results files: {results['directory']} (one row per input row; "
                     f"{results['repeated_rows_scored_zero']} repeated rows written with "
                     f"score 0)")
    if report.get("per_stream"):
        lines += _per_stream_lines(report["per_stream"])
    lines.append(f"report: {report['report_path']}; plots: {report['plots_index']} "
                 f"({report['plotted_streams']} streams plotted)")
    return lines
