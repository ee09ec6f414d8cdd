"""The click group, through CliRunner: settings precedence at the command line, clear errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from cellwatch.cli import main
from tests.unit.cli_runs import run


def test_config_show_resolves_file_environment_and_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[kafka]\ngroup_id = "g-file"\nclient_id = "c-file"\n')
    result = run(
        ["--config", str(config), "config", "show", "--format", "json",
         "--bootstrap-servers", "h1:9,h2:9"],
        env={"CELLWATCH_KAFKA_CLIENT_ID": "c-env",
             "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "env:1"},
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["kafka"]["group_id"] == "g-file"
    assert shown["kafka"]["client_id"] == "c-env"
    assert shown["kafka"]["bootstrap_servers"] == ["h1:9", "h2:9"]


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[metrics]\nport = 9999\n')
    result = run(["config", "show"], env={"CELLWATCH_CONFIG": str(config)})
    assert result.exit_code == 0
    assert "port = 9999" in result.output


def test_config_show_redacts_secrets() -> None:
    result = run(["config", "show"], env={
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN",
        "CELLWATCH_KAFKA_SASL_USERNAME": "u",
        "CELLWATCH_KAFKA_SASL_PASSWORD": "s3cret-value",
    })
    assert result.exit_code == 0
    assert "s3cret-value" not in result.output
    assert 'sasl_password = "**********"' in result.output


def test_bad_flag_value_exits_2_naming_the_flag() -> None:
    result = CliRunner().invoke(main, ["config", "show", "--bootstrap-servers", "nohost"], env={})
    assert result.exit_code == 2
    assert ("kafka.bootstrap_servers: expected host:port items, received 'nohost' "
            "(from flag --bootstrap-servers)") in result.output


def test_bad_environment_value_exits_2_naming_the_variable() -> None:
    result = CliRunner().invoke(main, ["config", "show"],
                                env={"CELLWATCH_METRICS_PORT": "70000"})
    assert result.exit_code == 2
    assert "metrics.port: expected a value of at most 65535, received 70000" in result.output
    assert "CELLWATCH_METRICS_PORT" in result.output


def test_help_shows_environment_variables() -> None:
    result = run(["config", "show", "--help"])
    assert "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS" in result.output
    assert "CELLWATCH_CONFIG" in run(["--help"]).output


def test_config_keys_lists_every_setting_once() -> None:
    result = run(["config", "keys"])
    lines = result.output.strip().splitlines()
    keys = [line.split()[0] for line in lines]
    assert len(keys) == len(set(keys))
    assert any(re.match(r"kafka\.sasl_password\s+CELLWATCH_KAFKA_SASL_PASSWORD", line)
               for line in lines)


def test_train_on_bad_data_names_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("stream,timestamp,temperature\n"
                    "a,2024-01-01T00:00:00Z,1.5\n"
                    "a,2024-01-01T00:01:00Z,warm\n")
    out = tmp_path / "model"
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(out)], env={})
    assert result.exit_code == 1
    assert f"{data}:3" in result.output and "'warm'" in result.output
    assert not out.exists()


def test_replay_needs_exactly_one_destination(tmp_path: Path) -> None:
    data = tmp_path / "r.csv"
    data.write_text("stream,timestamp,x\na,1000,1.0\n")
    result = CliRunner().invoke(main, ["replay", str(data)], env={})
    assert result.exit_code == 2
    assert "exactly one of --to-kafka TOPIC and --score-to FILE" in result.output


def test_replay_with_a_missing_artifact_says_which(tmp_path: Path) -> None:
    data = tmp_path / "r.csv"
    data.write_text("stream,timestamp,x\na,1000,1.0\n")
    result = CliRunner().invoke(main, ["replay", str(data), "--score-to",
                                       str(tmp_path / "s.jsonl"), "--artifact",
                                       str(tmp_path / "nowhere")], env={})
    assert result.exit_code == 1
    assert "nowhere: not found" in result.output


def test_synth_writes_a_readable_labeled_recording(tmp_path: Path) -> None:
    from training.recordings import read_recording
    from training.synthetic import read_labels

    result = run(["synth", str(tmp_path / "d"), "--streams", "3", "--channels", "2",
                  "--length", "400", "--anomaly-rate", "50", "--seed", "5"])
    assert result.exit_code == 0, result.output
    recording = read_recording([tmp_path / "d" / "readings.csv"])
    assert len(recording) == 1200 and recording.labeled
    labels = read_labels(tmp_path / "d" / "labels.json")
    assert labels and {label.stream for label in labels} <= set(recording.streams)


# ------------------------------------------------------------------ output destinations

READINGS_CSV = "stream,timestamp,x\na,1000,1.0\na,2000,2.0\n"


def test_train_refuses_a_directory_that_is_not_an_artifact_before_reading_data(
        tmp_path: Path) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    # The data is a FIFO no one writes: reading it would block, so the refusal must come first.
    data = tmp_path / "r.csv"
    os.mkfifo(data)
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(out)], env={})
    assert result.exit_code == 1, result.output
    assert f"model artifact {out}: exists and is not a cellwatch model artifact" in result.output
    assert (out / "holiday.jpg").read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "r.csv"]


def test_train_refuses_a_file_and_the_current_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "r.csv"
    data.write_text(READINGS_CSV)
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    result = CliRunner().invoke(main, ["train", str(data), "--out", str(existing)], env={})
    assert result.exit_code == 1
    assert "exists and is not a directory" in result.output
    assert existing.read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", str(data), "--out", "."], env={})
    assert result.exit_code == 1
    assert "expected the path of the directory to write" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "r.csv"]


def _fake_artifact(path: Path, extra: str | None = None) -> Path:
    (path / "step").mkdir(parents=True)
    (path / "model.keras").write_bytes(b"weights")
    (path / "step" / "saved_model.pb").write_bytes(b"graph")
    files = {"model.keras": {}, "step/saved_model.pb": {}}
    (path / "metadata.json").write_text(json.dumps({"format": "cellwatch-model",
                                                    "files": files}))
    if extra:
        (path / extra).write_text("not the artifact's")
    return path


def test_only_an_earlier_artifact_holding_only_its_own_files_is_replaced(tmp_path: Path) -> None:
    from training.output_destinations import OutputPathError, check_artifact_destination

    check_artifact_destination(tmp_path / "new" / "model")  # created by the save
    (tmp_path / "empty").mkdir()
    check_artifact_destination(tmp_path / "empty")  # made for it beforehand: nothing lost
    check_artifact_destination(_fake_artifact(tmp_path / "earlier"))
    with pytest.raises(OutputPathError, match=r"holds 1 file\(s\) that are not part of the "
                                              r"artifact, such as 'step/notes.txt'"):
        check_artifact_destination(_fake_artifact(tmp_path / "mixed", "step/notes.txt"))
    with pytest.raises(OutputPathError, match="exists and is not a cellwatch model artifact"):
        check_artifact_destination(tmp_path / "earlier" / "step")
    checkpoint = tmp_path / "m.checkpoint"
    checkpoint.mkdir()
    (checkpoint / "history.json").write_text("{}")
    check_artifact_destination(tmp_path / "m")  # an interrupted run's checkpoint: resumed
    (checkpoint / "thesis.tex").write_text("mine")
    with pytest.raises(OutputPathError, match=r"m\.checkpoint: holds 'thesis\.tex'"):
        check_artifact_destination(tmp_path / "m")


def test_evaluate_does_not_overwrite_files_of_another_origin(tmp_path: Path) -> None:
    data = tmp_path / "r.csv"
    data.write_text(READINGS_CSV)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# my docs")
    result = CliRunner().invoke(main, ["evaluate", str(data), "--out", str(docs),
                                       "--artifact", str(tmp_path / "nowhere")], env={})
    assert result.exit_code == 1
    assert "already holds index.md" in result.output and "nowhere" not in result.output
    assert (docs / "index.md").read_text() == "# my docs"
    result = CliRunner().invoke(main, ["evaluate", str(data), "--out", str(data)], env={})
    assert result.exit_code == 2 and "is a file" in result.output  # click's own check


def test_synth_does_not_overwrite_a_recording_of_another_origin(tmp_path: Path) -> None:
    (tmp_path / "readings.csv").write_text(READINGS_CSV)
    result = CliRunner().invoke(main, ["synth", str(tmp_path), "--length", "10"], env={})
    assert result.exit_code == 1
    assert "already holds readings.csv" in result.output
    assert (tmp_path / "readings.csv").read_text() == READINGS_CSV
    fresh = tmp_path / "fresh"
    for _ in range(2):  # an earlier synth's output is replaced
        result = CliRunner().invoke(main, ["synth", str(fresh), "--streams", "1",
                                           "--length", "10"], env={})
        assert result.exit_code == 0, result.output


def test_replay_checks_its_output_files_before_reading(tmp_path: Path) -> None:
    data = tmp_path / "r.csv"
    data.write_text(READINGS_CSV)
    result = CliRunner().invoke(main, ["replay", str(data), "--score-to", str(data)], env={})
    assert result.exit_code == 1
    assert f"scores file (--score-to) {data}: is the input {data}" in result.output
    assert data.read_text() == READINGS_CSV
    # A folder that cannot be created, with input that would block if it were read.
    blocker = tmp_path / "file"
    blocker.write_text("")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = CliRunner().invoke(main, ["replay", str(fifo), "--score-to",
                                       str(blocker / "scores.jsonl")], env={})
    assert result.exit_code == 1
    assert f"cannot be created, {blocker} is not a directory" in result.output


def test_an_output_file_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    from training.output_destinations import replaced_when_complete

    target = tmp_path / "scores.jsonl"
    target.write_text("old")
    with pytest.raises(RuntimeError), replaced_when_complete(target) as handle:
        handle.write(b"half")
        raise RuntimeError("scoring failed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["scores.jsonl"]
    with replaced_when_complete(tmp_path / "new" / "scores.jsonl") as handle:
        handle.write(b"new")
    assert (tmp_path / "new" / "scores.jsonl").read_text() == "new"
