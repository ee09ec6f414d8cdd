"""The click group, through CliRunner: settings precedence at the command line, clear errors."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
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


def test_evaluate_skab_protocol_text_report_and_json(tmp_path: Path) -> None:
    write_skab_experiment(tmp_path / "skab" / "valve1" / "0.csv", (400, 480))
    write_skab_experiment(tmp_path / "skab" / "valve1" / "1.csv", (350, 450))
    out, plots = tmp_path / "out", tmp_path / "every-plot"
    args = ["evaluate", str(tmp_path / "skab"), "--protocol", "skab", "--train-readings",
            "200", "--out", str(out)]

    text = run([*args, "--plots", str(plots)], env=SMALL_MODEL)
    assert text.exit_code == 0, text.output
    assert "[2/2] valve1/1.csv" in text.stderr and "[2/2]" not in text.stdout
    lines = text.stdout.splitlines()
    assert lines[0] == ("protocol skab: 2 streams, 1200 readings, 800 evaluated (the first "
                        "200 of each stream trained its model)")
    assert any(line.startswith("point-wise F1 ") and "(flag = likelihood >= 0.999, every "
               "reading a case)" in line for line in lines)
    # 80 + 100 of the 800 evaluated readings are labelled: 180 / (180 + 620 / 2).
    assert any(line.startswith("all-flag baseline F1 0.367 (every reading flagged)")
               for line in lines)
    assert any(line.startswith("window-wise F1 ") for line in lines)
    assert sorted(path.name for path in plots.iterdir()) == [
        ".cellwatch-plots", "valve1_0.csv.png", "valve1_1.csv.png"]
    # A folder of the user's own files is refused before anything is trained.
    mine = tmp_path / "my-pictures"
    mine.mkdir()
    (mine / "valve1_0.csv.png").write_bytes(b"my own picture")
    refused = run([*args, "--plots", str(mine)], env=SMALL_MODEL)
    assert refused.exit_code == 1 and "no earlier evaluation wrote" in refused.output
    assert (mine / "valve1_0.csv.png").read_bytes() == b"my own picture"
    assert "[1/2]" not in refused.stderr

    # Episodes are counted as the worker would end them, with its setting.
    as_json = run([*args, "--json"],
                  env={**SMALL_MODEL, "CELLWATCH_WORKER_ANOMALY_EPISODE_GAP": "5"})
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)  # nothing but the JSON on stdout
    assert report == json.loads((out / "evaluation.json").read_text())
    assert report["episode_gap"] == 5 and "after 5 unflagged" in report["windowwise"]["rule"]
    assert report["all_flag_baseline"]["f1"] == 180 / (180 + 620 / 2)
    assert set(report["per_stream"]) == {"valve1/0.csv", "valve1/1.csv"}
    # Without --plots, the default folder <out>/plots.
    assert len(report["plots"]) == 2 and all(
        Path(path).parent == out / "plots" for path in report["plots"])


def test_evaluate_a_synthetic_recording_counts_the_anomalies_found_by_kind(
        tmp_path: Path) -> None:
    import json
    from collections import Counter

    from training.synthetic import read_labels

    data = tmp_path / "d"
    assert run(["synth", str(data), "--streams", "3", "--channels", "2", "--length", "600",
                "--anomaly-rate", "60", "--seed", "5"]).exit_code == 0
    model = tmp_path / "model"
    trained = run(["train", str(data / "readings.csv"), "--out", str(model)], env=SMALL_MODEL)
    assert trained.exit_code == 0, trained.output
    args = ["evaluate", str(data / "readings.csv"), "--labels", str(data / "labels.json"),
            "--artifact", str(model)]
    report = json.loads(run([*args, "--out", str(tmp_path / "e1"), "--json"]).output)
    labels = read_labels(data / "labels.json")
    by_kind = report["by_kind"]
    assert {kind: c["anomalies"] for kind, c in by_kind.items()} == Counter(
        label.kind for label in labels)
    # Synthetic anomalies lie 20 readings apart, so each is one window of the window-wise
    # figures, which count windows found from the flags on their own.
    assert sum(c["found"] for c in by_kind.values()) == report["windowwise"]["windows_found"]
    text = run([*args, "--out", str(tmp_path / "e2")]).output
    assert ("anomalies found by kind (a flag inside the labelled anomaly): " + ", ".join(
        f"{kind} {c['found']}/{c['anomalies']}" for kind, c in by_kind.items())) in text


def test_evaluate_nab_protocol_refuses_nab_root_and_labels_matching_no_file(
        tmp_path: Path) -> None:
    data = tmp_path / "NAB" / "data" / "realKnownCause" / "x.csv"
    data.parent.mkdir(parents=True)
    data.write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    labels = tmp_path / "NAB" / "labels" / "combined_windows.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps({"realKnownCause/nyc_taxi.csv": []}))

    root = run(["evaluate", str(tmp_path / "NAB"), "--protocol", "nab", "--labels",
                str(labels), "--out", str(tmp_path / "out")])
    assert root.exit_code == 1
    assert "this is NAB's root folder (it holds data/ and labels/)" in root.output
    assert f"give {tmp_path / 'NAB' / 'data'}" in root.output

    unmatched = run(["evaluate", str(tmp_path / "NAB" / "data"), "--protocol", "nab",
                     "--labels", str(labels), "--out", str(tmp_path / "out")])
    assert unmatched.exit_code == 1
    assert (f"{labels}: none of its 1 keys names one of the 1 files read") in unmatched.output
    assert "'realKnownCause/nyc_taxi.csv'" in unmatched.output
    assert "'realKnownCause/x.csv'" in unmatched.output

    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = run(["evaluate", str(empty), "--protocol", "nab", "--labels", str(labels)])
    assert nothing.exit_code == 1
    assert f"{empty}: no .csv files in this directory" in nothing.output


def test_evaluate_skab_protocol_takes_its_labels_from_the_files(tmp_path: Path) -> None:
    labels = tmp_path / "windows.json"
    labels.write_text("{}")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--protocol", "skab",
                                       "--labels", str(labels)], env={})
    assert result.exit_code == 2
    assert "--protocol skab reads its labels from the files' 'anomaly' column" in result.output
    other = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--protocol", "nab",
                                      "--train-readings", "100"], env={})
    assert other.exit_code == 2
    assert "--train-readings applies to --protocol skab only" in other.output


@pytest.mark.parametrize(("text", "expected"), [
    ("[" * 100_000 + "]" * 100_000, "labels.json: invalid JSON: nested too deeply"),
    ('{"a.csv": [["2024-01-01", ' + "9" * 5000 + "]]}",
     "labels.json: invalid JSON: an integer of more than 4300 digits"),
    ('{"a.csv": [1, 2]}', "labels.json: 'a.csv': window 0: expected [start, end] timestamp"),
    ("{\n  oops\n}", "labels.json:2: invalid JSON: Expecting property name enclosed in double "
                     "quotes at column 3"),
])
def test_evaluate_with_a_hostile_labels_file_names_file_line_and_problem(
        tmp_path: Path, text: str, expected: str) -> None:
    data = tmp_path / "a.csv"
    data.write_text("timestamp,value\n2024-01-01 00:00:00,1.0\n")
    labels = tmp_path / "labels.json"
    labels.write_text(text)
    result = CliRunner().invoke(main, ["evaluate", str(data), "--labels", str(labels),
                                       "--out", str(tmp_path / "eval")], env={})
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


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


# ------------------------------------------------------------------------------ logging


@pytest.fixture
def restored_logging():
    """The CLI configures the process's logging; give the next tests theirs back."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    levels = root.level, kafka.level
    yield
    root.setLevel(levels[0])
    kafka.setLevel(levels[1])


SASL_ENV = {"CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN",
            "CELLWATCH_KAFKA_SASL_USERNAME": "reader",
            "CELLWATCH_KAFKA_SASL_PASSWORD": "s3cr\\et-hunter2",
            "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


def test_debug_logging_never_shows_the_sasl_password(
        restored_logging, caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError

    from cellwatch.kafka_clients import kafka_client_options
    from cellwatch.settings import load_settings

    result = CliRunner().invoke(main, ["--log-level", "debug", "--kafka-log-level", "debug",
                                       "config", "show"], env=SASL_ENV)
    assert result.exit_code == 0, result.output
    options = kafka_client_options(load_settings(environ=SASL_ENV).kafka)
    # KafkaAdminClient logs its whole configuration at debug level, then refuses the
    # unknown option: kafka-python's own log line, without a broker.
    with pytest.raises(KafkaConfigurationError):
        KafkaAdminClient(**options, not_an_option=True)
    logging.getLogger("cellwatch").error("failed with %s", options["sasl_plain_password"])
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "failed with **********" in caplog.text
    assert "hunter2" not in caplog.text


def test_kafka_logs_at_most_info_unless_asked(restored_logging) -> None:
    CliRunner().invoke(main, ["--log-level", "debug", "config", "keys"], env={})
    assert logging.getLogger("cellwatch").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("kafka.conn").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("kafka.conn").isEnabledFor(logging.INFO)
    CliRunner().invoke(main, ["--log-level", "error", "config", "keys"],
                       env={"CELLWATCH_LOG_LEVEL_KAFKA": "debug"})
    assert logging.getLogger("kafka.conn").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("cellwatch").isEnabledFor(logging.WARNING)


# ------------------------------------------------------------------------- start-up


@pytest.fixture
def worker_process_state(restored_logging, monkeypatch: pytest.MonkeyPatch):
    """`run` installs signal handlers and loads a model; keep the handlers, fake the model
    (these tests end before a model is used)."""
    import signal

    import cellwatch.wiring

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    loaded: list[Path] = []
    monkeypatch.setattr(cellwatch.wiring, "load_artifact", loaded.append)
    yield loaded
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_taken_metrics_port_exits_4_before_anything_else(worker_process_state) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["run", "--metrics-port", str(port)],
                                    env={"CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.exit_code == 4, result.output
    assert f"metrics endpoint 127.0.0.1:{port}: cannot listen (Address already in use)" in (
        result.output)
    assert worker_process_state == []  # no model loaded, no broker contacted
    assert "Traceback" not in result.output


def test_an_unreachable_broker_exits_5_with_one_line_in_bounded_time(
        worker_process_state) -> None:
    import time

    started = time.monotonic()
    result = CliRunner().invoke(main, ["run", "--metrics-port", "0"], env={
        "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "CELLWATCH_KAFKA_STARTUP_TIMEOUT_SECONDS": "1.5"})
    assert result.exit_code == 5, result.output
    assert time.monotonic() - started < 10
    assert ("Error: no Kafka broker accepted a connection within 1.5 s (127.0.0.1:1: "
            "Connection refused)") in result.output
    assert len(worker_process_state) == 1 and "Traceback" not in result.output


def test_a_listener_that_does_not_speak_kafka_exits_5_naming_the_security_settings(
        worker_process_state) -> None:
    # What a TLS or SASL mismatch looks like to kafka-python: the port accepts, the
    # handshake never completes.
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        result = CliRunner().invoke(main, ["run", "--metrics-port", "0"], env={
            "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{silent.getsockname()[1]}",
            "CELLWATCH_KAFKA_STARTUP_TIMEOUT_SECONDS": "1"})
    assert result.exit_code == 5, result.output
    assert "cannot start the clients" in result.output
    assert "kafka.security_protocol" in result.output and "Traceback" not in result.output


def test_a_missing_ca_file_is_a_settings_error_before_start(worker_process_state,
                                                            tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run"], env={
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SSL",
        "CELLWATCH_KAFKA_SSL_CAFILE": str(tmp_path / "ca.pem")})
    assert result.exit_code == 2
    assert "kafka.ssl_cafile: expected a readable file" in result.output
    assert "environment variable CELLWATCH_KAFKA_SSL_CAFILE" in result.output
