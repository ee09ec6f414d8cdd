"""The ``cellwatch`` command line: one click group of thin commands.

Each command parses its flags, builds the settings tree once, and calls into ``training`` or
``streaming``. Flags that override a setting are declared with :func:`settings_option`; their
environment variables are the settings' own (``CELLWATCH_<SECTION>_<FIELD>``) and are shown in
``--help``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from cellwatch.command_errors import SettingsProblem, user_errors
from cellwatch.logging_setup import configure_logging, mask_secrets_of
from cellwatch.settings import (
    CONFIG_ENV_VAR,
    Settings,
    SettingsError,
    env_var_name,
    load_settings,
)
from cellwatch.settings_display import as_plain_dict, describe_settings, render_toml

if TYPE_CHECKING:
    from training.trainer import TrainingOptions

F = TypeVar("F", bound=Callable[..., Any])

# Flag destinations that carry a setting are named "<section>__<field>".
_SETTING_SEPARATOR = "__"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What the group captured for its commands: the config file and the environment."""

    config_path: Path | None
    environ: Mapping[str, str]


def settings_option(key: str, *param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """A flag that overrides the setting ``key`` (e.g. ``"kafka.bootstrap_servers"``)."""
    section, name = key.split(".")
    attrs.setdefault("default", None)
    attrs.setdefault("show_default", False)
    return click.option(
        *param_decls,
        f"{section}{_SETTING_SEPARATOR}{name}",
        envvar=env_var_name(key),
        show_envvar=True,
        **attrs,
    )


def build_settings(ctx: click.Context) -> Settings:
    """The settings tree for this command: file < environment < flags given on the line."""
    invocation: Invocation = ctx.find_object(Invocation)
    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for param_name, value in ctx.params.items():
        if _SETTING_SEPARATOR not in param_name:
            continue
        # Values click took from the environment are left to the loader, which reads the
        # same variables and can then say where a bad value came from.
        if ctx.get_parameter_source(param_name) is ParameterSource.COMMANDLINE:
            key = param_name.replace(_SETTING_SEPARATOR, ".")
            overrides[key] = value
            origins[key] = f"flag {flags[param_name]}"
    try:
        settings = load_settings(invocation.config_path, invocation.environ, overrides, origins)
    except SettingsError as error:
        raise SettingsProblem(error) from None
    mask_secrets_of(settings)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV_VAR,
    show_envvar=True,
    help="TOML settings file (one table per section).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    envvar="CELLWATCH_LOG_LEVEL",
    show_envvar=True,
    help="Logging verbosity.",
)
@click.option(
    "--kafka-log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    envvar="CELLWATCH_LOG_LEVEL_KAFKA",  # CELLWATCH_KAFKA_* are settings
    show_envvar=True,
    help="Logging verbosity of kafka-python (default: --log-level, but at most info; its "
         "debug lines are protocol traces).",
)
@click.version_option(package_name="cellwatch")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str,
         kafka_log_level: str | None) -> None:
    """cellwatch: streaming time-series anomaly detection on Kafka."""
    configure_logging(log_level, kafka_log_level)
    ctx.obj = Invocation(config_path=config_path, environ=dict(os.environ))


@main.group()
def config() -> None:
    """Inspect the resolved settings."""


@config.command("show")
@click.option("--format", "output_format", type=click.Choice(["toml", "json"]), default="toml",
              show_default=True, help="Output format.")
@settings_option("kafka.bootstrap_servers", "--bootstrap-servers",
                 help="Comma-separated host:port list.")
@click.pass_context
def config_show(ctx: click.Context, output_format: str, **_flags: Any) -> None:
    """Print the resolved settings, secrets redacted."""
    settings = build_settings(ctx)
    if output_format == "json":
        click.echo(json.dumps(as_plain_dict(settings), indent=2))
    else:
        click.echo(render_toml(settings), nl=False)


@config.command("keys")
def config_keys() -> None:
    """List every setting with its environment variable and default."""
    rows = describe_settings()
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for key, env, default, help_text in rows:
        click.echo(f"{key:<{widths[0]}}  {env:<{widths[1]}}  {default:<{widths[2]}}  {help_text}")


DATA_FORMATS = ["auto", "long-csv", "wide-csv", "jsonl", "nab", "skab"]
_data_argument = click.argument(
    "data", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
_format_option = click.option(
    "--format", "data_format", type=click.Choice(DATA_FORMATS), default="auto",
    show_default=True, help="Recording format (auto: by extension and header).")


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--streams", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--channels", type=click.IntRange(min=1, max=64), default=4, show_default=True)
@click.option("--length", type=click.IntRange(min=10), default=5000, show_default=True,
              help="Readings per stream.")
@click.option("--interval", "interval_s", type=click.IntRange(min=1), default=300,
              show_default=True, help="Seconds between readings.")
@click.option("--anomaly-rate", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Expected anomalies per 10,000 readings per stream.")
@settings_option("training.seed", "--seed", type=int, help="Random seed.")
@click.pass_context
def synth(ctx: click.Context, out_dir: Path, streams: int, channels: int, length: int,
          interval_s: int, anomaly_rate: float, **_flags: Any) -> None:
    """Write a labeled synthetic multi-stream recording."""
    from training.output_destinations import check_output_directory
    from training.recordings import write_long_csv
    from training.synthetic import generate, write_labels

    settings = build_settings(ctx)
    with user_errors():
        # labels.json is written last: its presence marks an earlier synth's output.
        check_output_directory(out_dir, "synth output directory",
                               ["readings.csv", "labels.json"], marker="labels.json")
    recording, labels = generate(streams=streams, channels=channels, length=length,
                                 interval_s=interval_s, seed=settings.training.seed,
                                 anomaly_rate=anomaly_rate)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_long_csv(recording, out_dir / "readings.csv")
    write_labels(labels, out_dir / "labels.json")
    kinds = Counter(label.kind for label in labels)
    by_kind = ", ".join(f"{kind}: {count}" for kind, count in sorted(kinds.items()))
    click.echo(f"wrote {len(recording)} readings of {streams} streams x {channels} channels "
               f"to {out_dir / 'readings.csv'}")
    click.echo(f"wrote {len(labels)} labeled anomalies ({by_kind}) to {out_dir / 'labels.json'}")


@main.command()
@_data_argument
@_format_option
@settings_option("model.artifact", "--out", type=click.Path(path_type=Path),
                 help="Model artifact directory to write.")
@settings_option("training.epochs", "--epochs", type=int, help="Maximum epochs.")
@settings_option("training.seed", "--seed", type=int, help="Random seed.")
@settings_option("training.sequence_length", "--sequence-length", type=int,
                 help="Readings per training sequence.")
@settings_option("training.batch_size", "--batch-size", type=int, help="Sequences per step.")
@click.pass_context
def train(ctx: click.Context, data: tuple[Path, ...], data_format: str, **_flags: Any) -> None:
    """Train a model on recorded data and write the model artifact."""
    from cellwatch.wiring import training_options
    from training.output_destinations import check_artifact_destination
    from training.recordings import read_recording
    from training.trainer import train as train_model

    settings = build_settings(ctx)
    with user_errors():
        check_artifact_destination(settings.model.artifact)  # before reading the data
        recording = read_recording(list(data), data_format)
        click.echo(recording.summary.describe())
        # A progress bar on a terminal; one line per epoch in logs.
        verbose = 1 if sys.stdout.isatty() else 2
        result = train_model(recording, settings.model.artifact,
                             training_options(settings.training, verbose))
    report = result.report
    click.echo(f"model {result.metadata.model_version} written to {settings.model.artifact}")
    click.echo(f"epochs {report['epochs_run']} (best {report['best_epoch']}), "
               f"validation loss {report['best_val_loss']:.4f}, "
               f"{report['readings_per_second']:.0f} readings/s")
    click.echo(f"report: {result.report_path}; loss curves: {result.plot_path}")


@main.command()
@_data_argument
@_format_option
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="Anomaly windows: NAB's combined_windows.json or `cellwatch synth` labels.")
@click.option("--protocol", type=click.Choice(["artifact", "nab", "skab"]), default="artifact",
              show_default=True,
              help="artifact: score with a trained model; nab: per file, train on its "
                   "probationary period, then stream it (NAB's protocol); skab: per file, "
                   "train on its first --train-readings readings, stream it all, judge the "
                   "rest (SKAB's protocol; --format auto reads SKAB files).")
@click.option("--train-readings", type=click.IntRange(min=1),
              show_default="400, as in SKAB's protocol",
              help="skab protocol: readings at the start of each file that train its model "
                   "and are left out of the metrics.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("runs/evaluation"), show_default=True, help="Report directory.")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Plot every stream into this folder (default: the 12 streams most worth "
                   "a look, into <out>/plots).")
@click.option("--seeds", type=str, callback=lambda _ctx, _param, value: _seed_list(value),
              help="nab and skab protocols: comma-separated training seeds; the protocol "
                   "runs once per seed (each report in <out>/seed-<seed>/) and the report "
                   "gives every seed's key figures with their mean and range (default: one "
                   "run with training.seed).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (every figure of the text report) instead of "
                   "text; progress goes to stderr.")
@settings_option("model.artifact", "--artifact", type=click.Path(path_type=Path),
                 help="Model artifact to evaluate (artifact protocol).")
@click.pass_context
def evaluate(ctx: click.Context, data: tuple[Path, ...], data_format: str,
             labels_path: Path | None, protocol: str, train_readings: int | None, out_dir: Path,
             plots_dir: Path | None, seeds: list[int] | None, as_json: bool,
             **_flags: Any) -> None:
    """Score labeled data through the streaming step and report NAB and F1 scores."""
    from detector.artifact import load_artifact
    from training.evaluation import DEFAULT_MAX_PLOTS, evaluate_artifact, read_label_windows
    from training.evaluation_report import report_json, report_lines
    from training.nab_protocol import run_nab_protocol
    from training.output_destinations import check_output_directory, check_plots_directory
    from training.recordings import read_recording
    from training.seed_spread import evaluate_over_seeds, seed_directory, spread_lines
    from training.skab_protocol import SKAB_TRAIN_READINGS, run_skab_protocol

    if train_readings is not None and protocol != "skab":
        raise click.UsageError("--train-readings applies to --protocol skab only")
    if seeds is not None and protocol == "artifact":
        raise click.UsageError("--seeds applies to --protocol nab and skab, which train")
    if seeds is not None and plots_dir is not None:
        raise click.UsageError("--plots draws one run's streams; with --seeds each seed's "
                               "plots are in <out>/seed-<seed>/plots")
    settings = build_settings(ctx)
    # --plots asks for every stream; without it, the few most worth a look.
    plot_choice = {"plots_dir": plots_dir,
                   "max_plots": None if plots_dir is not None else DEFAULT_MAX_PLOTS}
    episode_gap = settings.worker.anomaly_episode_gap  # episodes counted as the worker ends them

    def progress(done: int, total: int, key: str) -> None:
        click.echo(f"[{done}/{total}] {key}", err=True)

    run_outputs = ["evaluation.json", "index.md", "plots", "results"]
    with user_errors():
        # evaluation.json is written last: its presence marks an earlier evaluation.
        written = run_outputs + [seed_directory(out_dir, seed).name for seed in seeds or ()]
        check_output_directory(out_dir, "report directory (--out)", written,
                               marker="evaluation.json")
        for seed in seeds or ():
            check_output_directory(seed_directory(out_dir, seed), "seed report directory",
                                   run_outputs, marker="evaluation.json")
        if plots_dir is not None:
            check_plots_directory(plots_dir, "plots directory (--plots)")
        label_windows = read_label_windows(labels_path) if labels_path else None
        windows = label_windows.windows if label_windows else None
        labels_name = str(labels_path)
        if protocol == "nab":
            if windows is None or len(data) != 1 or not data[0].is_dir():
                raise click.UsageError("--protocol nab needs one NAB data directory and "
                                       "--labels combined_windows.json")

            def run_once(options: TrainingOptions, directory: Path) -> dict:
                return run_nab_protocol(data[0], windows, directory, options,
                                        progress=progress, labels_name=labels_name,
                                        episode_gap=episode_gap, **plot_choice)
        elif protocol == "skab":
            if windows is not None:
                raise click.UsageError("--protocol skab reads its labels from the files' "
                                       "'anomaly' column; leave out --labels")

            def run_once(options: TrainingOptions, directory: Path) -> dict:
                return run_skab_protocol(
                    list(data), directory, options, train_readings or SKAB_TRAIN_READINGS,
                    "skab" if data_format == "auto" else data_format, progress=progress,
                    episode_gap=episode_gap, **plot_choice)
        if protocol != "artifact" and seeds is not None:
            report = evaluate_over_seeds(
                run_once, _short_prefix_training_options(settings), seeds, out_dir,
                progress=lambda message: click.echo(message, err=True))
        elif protocol != "artifact":
            report = run_once(_short_prefix_training_options(settings), out_dir)
        else:
            recording = read_recording(list(data), data_format)
            artifact = load_artifact(settings.model.artifact)
            nab = recording.summary.formats == ("nab",) and len(data) == 1
            report = evaluate_artifact(artifact, recording, out_dir, windows, nab=nab,
                                       window_kinds=label_windows.kinds if label_windows
                                       else None, labels_name=labels_name,
                                       nab_data_dir=data[0] if nab else None,
                                       episode_gap=episode_gap, **plot_choice)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(report_json(report) + "\n")
    if as_json:
        click.echo(report_json(report))
    else:
        for line in (spread_lines(report) if seeds is not None else report_lines(report)):
            click.echo(line)


def _seed_list(value: str | None) -> list[int] | None:
    from training.seed_spread import parse_seeds

    try:
        return None if value is None else parse_seeds(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def _short_prefix_training_options(settings: Settings) -> TrainingOptions:
    """The training settings, adapted to the short prefix each file's model learns from in
    the per-file protocols (NAB's probationary period, SKAB's first 400 readings)."""
    from cellwatch.wiring import training_options

    return dataclasses.replace(training_options(settings.training, verbose=0),
                               sequence_length=SHORT_PREFIX_SEQUENCE_LENGTH,
                               batch_size=SHORT_PREFIX_BATCH_SIZE)


# The shortest NAB file's probationary period (186 rows) must still yield validation windows.
SHORT_PREFIX_SEQUENCE_LENGTH = 32
# A probationary period of at most 750 rows holds about 30 training sequences of 32: the
# default batch (256) would make one gradient step per epoch; 8 makes about four. On the 35
# NAB files: standard score 31.3 with 256, 34.6 with 8, 35.9 with 4 (one run each, before
# the onset fix of b30e15a; 35.0 with 8 after it). 50 epochs instead of 20 scored lower (33.0).
# SKAB's 400-reading prefix is in the same range, so its protocol uses the same two values.
SHORT_PREFIX_BATCH_SIZE = 8


@main.command()
@settings_option("kafka.bootstrap_servers", "--bootstrap-servers",
                 help="Comma-separated host:port list.")
@settings_option("kafka.group_id", "--group", help="Consumer group of the workers.")
@settings_option("kafka.readings_topic", "--readings-topic", help="Topic to consume.")
@settings_option("kafka.client", "--kafka-client",
                 type=click.Choice(["kafka-python", "confluent"]),
                 help="Kafka client library (confluent: pip install 'cellwatch[confluent]').")
@settings_option("model.artifact", "--artifact", type=click.Path(path_type=Path),
                 help="Model artifact to serve.")
@settings_option("metrics.port", "--metrics-port", type=int, help="Metrics endpoint port.")
@click.pass_context
def run(ctx: click.Context, **_flags: Any) -> None:
    """Run the streaming worker: consume readings, score, publish, export metrics."""
    from cellwatch.wiring import run_worker

    settings = build_settings(ctx)
    stop = threading.Event()
    reload_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        logging.getLogger("cellwatch").info("%s received: finishing the batch in hand",
                                            signal.Signals(signum).name)
        stop.set()

    def request_reload(_signum: int, _frame: Any) -> None:
        logging.getLogger("cellwatch").info("SIGHUP received: loading the model artifact again")
        reload_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    signal.signal(signal.SIGHUP, request_reload)
    with user_errors():
        run_worker(settings, stop, reload_requested=reload_requested)


@main.command()
@_data_argument
@_format_option
@click.option("--to-kafka", "topic", help="Produce the readings into this topic.")
@click.option("--partitions", type=click.IntRange(min=1), default=4, show_default=True,
              help="Partitions of the --to-kafka topic when it has to be created.")
@click.option("--speed", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Pace: 0 as fast as possible, 1 real time, 60 a minute of data per second.")
@click.option("--score-to", "score_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Score in process (no broker) and write score records as JSON lines.")
@settings_option("kafka.bootstrap_servers", "--bootstrap-servers",
                 help="Comma-separated host:port list.")
@settings_option("kafka.client", "--kafka-client",
                 type=click.Choice(["kafka-python", "confluent"]),
                 help="Kafka client library (confluent: pip install 'cellwatch[confluent]').")
@settings_option("model.artifact", "--artifact", type=click.Path(path_type=Path),
                 help="Model artifact for --score-to.")
@click.pass_context
def replay(ctx: click.Context, data: tuple[Path, ...], data_format: str, topic: str | None,
           partitions: int, speed: float, score_path: Path | None, **_flags: Any) -> None:
    """Replay recorded readings into Kafka, or score them in process."""
    from cellwatch.kafka_clients import kafka_client
    from cellwatch.startup_errors import kafka_startup, wait_for_brokers
    from detector.artifact import load_artifact
    from streaming.engine import ScoringEngine
    from streaming.replay import replay_to_kafka, score_in_process
    from streaming.state_store import StateStore
    from training.output_destinations import check_output_file, replaced_when_complete
    from training.recordings import read_recording

    if (topic is None) == (score_path is None):
        raise click.UsageError("give exactly one of --to-kafka TOPIC and --score-to FILE")
    settings = build_settings(ctx)
    anomalies_path = None
    if score_path is not None:
        anomalies_path = score_path.with_name(score_path.stem + ".anomalies.jsonl")
    with user_errors():
        for path, what in ((score_path, "scores file (--score-to)"),
                           (anomalies_path, "anomaly episodes file")):
            if path is not None:
                check_output_file(path, what, data)
        recording = read_recording(list(data), data_format).filled()
        readings = ((r.stream, r.timestamp_ms, r.values) for r in recording.readings())
        with click.progressbar(length=len(recording), label="replaying",
                               file=sys.stderr) as bar:
            done = [0]

            def progress(count: int) -> None:
                bar.update(count - done[0])
                done[0] = count

            if topic is not None:
                client = kafka_client(settings.kafka)
                servers = settings.kafka.bootstrap_servers
                wait_for_brokers(servers, settings.kafka.startup_timeout_seconds)
                with kafka_startup(servers):
                    client.ensure_topic(client.options, topic, partitions)
                    sink = client.record_sink(client.options)
                try:
                    sent = replay_to_kafka(readings, recording.channels, sink, topic, speed,
                                           progress)
                finally:
                    sink.close()
                summary = f"produced {sent} readings to {topic}"
            else:
                artifact = load_artifact(settings.model.artifact)
                engine = ScoringEngine(artifact.step, StateStore(artifact.step.layout),
                                       artifact.metadata.channels,
                                       artifact.metadata.model_version,
                                       settings.worker.anomaly_episode_gap)
                # Written aside and renamed into place: a failed run leaves no half file.
                with replaced_when_complete(score_path) as scores_out, \
                        replaced_when_complete(anomalies_path) as events:
                    stats = score_in_process(readings, engine, scores_out, events,
                                             settings.worker.max_poll_records, progress)
                summary = (f"scored {stats.scored} readings ({stats.rejected} rejected), "
                           f"{stats.flagged} flagged, {stats.episodes} anomaly episodes; "
                           f"scores: {score_path}; episodes: {anomalies_path}")
    click.echo(summary)
