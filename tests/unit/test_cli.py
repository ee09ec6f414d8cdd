"""The click group, through CliRunner: settings precedence at the command line, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from cellwatch.cli import main


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(main, args, env=env or {}, catch_exceptions=False)


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
