"""`cellwatch evaluate --seeds`: a per-file protocol once per training seed, with the spread."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli_runs import SMALL_MODEL, run, write_skab_experiment


def test_skab_protocol_over_two_seeds_keeps_each_report_and_their_spread(tmp_path: Path):
    write_skab_experiment(tmp_path / "skab" / "valve1" / "0.csv", (400, 480))
    out = tmp_path / "out"
    args = ["evaluate", str(tmp_path / "skab"), "--protocol", "skab", "--train-readings",
            "200", "--out", str(out), "--seeds", "3,4"]

    result = run([*args, "--json"], env=SMALL_MODEL)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "evaluation.json").read_text())
    assert summary["seeds"] == [3, 4] and "seed 4 (2 of 2)" in result.stderr
    reports = [json.loads((out / f"seed-{seed}" / "evaluation.json").read_text())
               for seed in (3, 4)]
    assert [report["training_options"]["seed"] for report in reports] == [3, 4]
    f1 = [report["pointwise"]["f1"] for report in reports]
    assert [summary["per_seed"][seed]["f1"] for seed in ("3", "4")] == f1
    assert summary["spread"]["f1"]["mean"] == sum(f1) / 2
    # A seed's run is the ordinary protocol's: the same figures as a run with that seed.
    alone = run(["evaluate", str(tmp_path / "skab"), "--protocol", "skab", "--train-readings",
                 "200", "--out", str(tmp_path / "alone"), "--json"],
                env={**SMALL_MODEL, "CELLWATCH_TRAINING_SEED": "4"})
    assert json.loads(alone.stdout)["pointwise"] == reports[1]["pointwise"]

    text = run(args, env=SMALL_MODEL)  # again, into the same directory: an earlier run's
    assert text.exit_code == 0, text.output
    assert text.stdout.splitlines()[0].startswith("protocol skab over training seeds 3, 4")
    assert any(line.startswith("f1: ") and "; mean " in line for line in text.stdout.splitlines())


def test_seeds_are_refused_where_they_cannot_apply(tmp_path: Path):
    write_skab_experiment(tmp_path / "skab" / "valve1" / "0.csv", (400, 480))
    base = ["evaluate", str(tmp_path / "skab"), "--out", str(tmp_path / "out")]
    bad = run([*base, "--protocol", "skab", "--seeds", "3,3"])
    assert bad.exit_code == 2 and "expected distinct seeds of 0 or more, received: '3,3'" in (
        bad.output)
    artifact = run([*base, "--seeds", "3,4"])
    assert artifact.exit_code == 2 and "--seeds applies to --protocol nab and skab" in (
        artifact.output)
    plots = run([*base, "--protocol", "skab", "--seeds", "3,4", "--plots",
                 str(tmp_path / "plots")])
    assert plots.exit_code == 2 and "with --seeds each seed's plots are in" in plots.output
    # Folders that no earlier evaluation wrote are refused before anything is trained.
    mine = tmp_path / "out" / "seed-3"
    mine.mkdir(parents=True)
    (mine / "results").write_text("my notes")
    refused = run([*base, "--protocol", "skab", "--seeds", "3,4"], env=SMALL_MODEL)
    assert refused.exit_code == 1 and "already holds seed-3" in refused.output
    (tmp_path / "out" / "evaluation.json").write_text("{}")  # as if an earlier run wrote it
    refused = run([*base, "--protocol", "skab", "--seeds", "3,4"], env=SMALL_MODEL)
    assert refused.exit_code == 1 and "seed report directory" in refused.output
    assert "[1/1]" not in refused.stderr
    assert (mine / "results").read_text() == "my notes"
