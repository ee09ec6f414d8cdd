"""What the CLI tests share: invoking the click group, a small model's settings, and a
made-up SKAB experiment file."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cellwatch.cli import main


def run(args: list[str], env: dict[str, str] | None = None):
    """``cellwatch ARGS`` through CliRunner, with only ``env`` as the environment."""
    return CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)


def write_skab_experiment(path: Path, fault: tuple[int, int], length: int = 600) -> None:
    """A made-up SKAB file: `;`-separated, a channel name with spaces, labels as 0.0/1.0."""
    import datetime as dt

    import numpy as np

    rng = np.random.default_rng(fault[0])
    start = dt.datetime(2020, 3, 9, 10, 0, 0)
    rows = ["datetime;Pressure;Volume Flow RateRMS;anomaly;changepoint"]
    for i in range(length):
        faulty = fault[0] <= i < fault[1]
        pressure = 1.0 + 0.1 * np.sin(i / 20) + 0.02 * rng.normal() + 3.0 * faulty
        flow = 32.0 + 0.5 * np.cos(i / 30) + 0.1 * rng.normal()
        rows.append(f"{start + dt.timedelta(seconds=i):%Y-%m-%d %H:%M:%S};{float(pressure)!r};"
                    f"{float(flow)!r};{float(faulty)};0.0")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")


SMALL_MODEL = {"CELLWATCH_TRAINING_EPOCHS": "2", "CELLWATCH_TRAINING_MEMORY_UNITS": "4",
               "CELLWATCH_TRAINING_HIDDEN_UNITS": "4"}
