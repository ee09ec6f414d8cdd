"""The one settings tree of cellwatch: typed, frozen, validated, built once.

Precedence, lowest first: defaults < TOML file (``--config`` / ``CELLWATCH_CONFIG``) <
environment variables ``CELLWATCH_<SECTION>_<FIELD>`` < command-line flags.

Nothing here reads the environment or touches a file at import time: :func:`load_settings`
receives the environment mapping and the config path from the CLI, which is the only caller
that knows about ``os.environ``. Each section is passed down on its own to the code that
needs it.

Every bad value fails with :class:`SettingsError`, whose message names the setting, where the
value came from, what was expected and what was received.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellwatch.setting_fields import (
    REDACTED,
    Secret,
    SettingsError,
    SettingsSection,
    coerce_value,
    describe_type,
    setting,
    shown_value,
)

# The settings tree's public names include its errors and secrets (declared in setting_fields).
__all__ = ["CONFIG_ENV_VAR", "ENV_PREFIX", "REDACTED", "SECTIONS", "KafkaSettings",
           "MetricsSettings", "ModelSettings", "Secret", "Settings", "SettingsError",
           "TrainingSettings", "WorkerSettings", "env_var_name", "load_settings", "setting_keys"]

ENV_PREFIX = "CELLWATCH_"
CONFIG_ENV_VAR = "CELLWATCH_CONFIG"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# The mechanisms cellwatch can authenticate with: user name and password. kafka-python's
# OAUTHBEARER needs a token provider object and GSSAPI the gssapi package and a Kerberos
# setup, neither of which settings can supply, so they are refused here instead of failing
# at every connection attempt.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# The Kafka client libraries the worker can run on; confluent-kafka is an extra.
KAFKA_CLIENTS = ("kafka-python", "confluent")


@dataclasses.dataclass(frozen=True)
class KafkaSettings(SettingsSection):
    """Where the broker is, how to authenticate, and the topics cellwatch reads and writes."""

    section_name: typing.ClassVar[str] = "kafka"

    bootstrap_servers: tuple[str, ...] = setting(
        ("127.0.0.1:19092",), "host:port of one or more brokers", positive=True)
    client: str = setting(
        "kafka-python", "Kafka client library: kafka-python, or confluent (librdkafka, "
        "faster; pip install 'cellwatch[confluent]')", choices=KAFKA_CLIENTS)
    client_id: str = setting("cellwatch", "client id sent to the broker")
    group_id: str = setting("cellwatch", "consumer group of the workers")
    readings_topic: str = setting("cellwatch.readings", "topic of incoming sensor readings")
    scores_topic: str = setting("cellwatch.scores", "one score record per reading")
    anomalies_topic: str = setting("cellwatch.anomalies", "one event per anomaly episode")
    dead_letter_topic: str = setting("cellwatch.dead-letter", "rejected readings, with reasons")
    changelog_topic: str | None = setting(
        None, "compacted per-stream state checkpoints of this group and readings topic "
        "(default: <group_id>.state-changelog)")
    transactional_id: str | None = setting(
        None, "this worker's transactional id with worker.transactional: unique per worker, "
        "stable across its restarts (default: <group_id>.<client_id>)")
    security_protocol: str = setting(
        "PLAINTEXT", "transport security", choices=SECURITY_PROTOCOLS)
    sasl_mechanism: str | None = setting(
        None, "SASL mechanism when security_protocol is SASL_*", choices=SASL_MECHANISMS)
    sasl_username: str | None = setting(None, "SASL user name")
    sasl_password: Secret | None = setting(None, "SASL password (never printed)")
    ssl_cafile: Path | None = setting(None, "CA bundle that signed the brokers' certificates")
    ssl_certfile: Path | None = setting(None, "client certificate for mutual TLS")
    ssl_keyfile: Path | None = setting(None, "client private key for mutual TLS")
    ssl_password: Secret | None = setting(None, "password of the client private key")
    request_timeout_ms: int = setting(30_000, "broker request timeout", positive=True)
    session_timeout_ms: int = setting(
        10_000, "a worker silent this long leaves the group and its partitions move "
        "(the broker allows 6000 and up by default)", positive=True)
    startup_timeout_seconds: float = setting(
        30.0, "how long a command waits at start for a broker to accept a connection, and "
        "for the Kafka clients to connect, before it gives up with exit code 5",
        positive=True)

    def _cross_check(self) -> None:
        if self.client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise SettingsError(
                "kafka.client: expected kafka-python when the confluent-kafka package is not "
                "installed (pip install 'cellwatch[confluent]'), received 'confluent'",
                key="kafka.client")
        uses_sasl = self.security_protocol.startswith("SASL_")
        if uses_sasl and self.sasl_mechanism is None:
            raise SettingsError(
                f"kafka.sasl_mechanism: expected one of {', '.join(SASL_MECHANISMS)} because "
                f"kafka.security_protocol is {self.security_protocol}, received nothing")
        if uses_sasl and (self.sasl_username is None or self.sasl_password is None):
            raise SettingsError(
                f"kafka.sasl_username and kafka.sasl_password: expected both for SASL "
                f"mechanism {self.sasl_mechanism}, received "
                f"{'a user name' if self.sasl_username else 'no user name'} and "
                f"{'a password' if self.sasl_password else 'no password'}")
        for key in ("readings_topic", "scores_topic", "anomalies_topic", "dead_letter_topic"):
            _check_topic_name(f"kafka.{key}", getattr(self, key))
        _check_topic_name("kafka.changelog_topic", self.state_changelog_topic)
        topics = [self.readings_topic, self.scores_topic, self.anomalies_topic,
                  self.dead_letter_topic, self.state_changelog_topic]
        if len(set(topics)) != len(topics):
            raise SettingsError(
                f"kafka topics: expected five different topic names, received {topics}")
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            _check_readable_file(f"kafka.{key}", getattr(self, key))
        for server in self.bootstrap_servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise SettingsError(
                    f"kafka.bootstrap_servers: expected host:port items, received {server!r}",
                    key="kafka.bootstrap_servers")


    @property
    def state_changelog_topic(self) -> str:
        """The changelog topic: set, or derived from the group (a changelog belongs to one
        group and one readings topic, as a Kafka Streams changelog to one application)."""
        return self.changelog_topic or f"{self.group_id}.state-changelog"


def _check_readable_file(key: str, path: Path | None) -> None:
    # Checked here, so a wrong path stops the command at once with the setting's name,
    # instead of as a traceback from the TLS library at the first connection attempt.
    if path is None:
        return
    if not path.exists():
        problem = "not found"
    elif not path.is_file():
        problem = "not a regular file"
    elif not os.access(path, os.R_OK):
        problem = "not readable by this user"
    else:
        return
    raise SettingsError(f"{key}: expected a readable file, received {str(path)!r} ({problem})",
                        key=key)


_TOPIC_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _check_topic_name(key: str, name: str) -> None:
    # Kafka's own rule (kafka.common.internals.Topic): legal chars, 1..249 long, not . or ..
    if not name or len(name) > 249 or name in (".", "..") or set(name) - _TOPIC_CHARS:
        raise SettingsError(
            f"{key}: expected a Kafka topic name (1-249 of letters, digits, '.', '_', '-'), "
            f"received {name!r}", key=key)


@dataclasses.dataclass(frozen=True)
class WorkerSettings(SettingsSection):
    """How the streaming worker polls, batches, rejects, evicts, checkpoints and reloads."""

    section_name: typing.ClassVar[str] = "worker"

    max_poll_records: int = setting(5000, "readings taken per poll, scored together",
                                    positive=True)
    poll_timeout_ms: int = setting(200, "longest wait for readings in one poll", minimum=0)
    max_message_bytes: int = setting(
        65_536, "larger readings go to the dead-letter topic", positive=True)
    idle_stream_eviction_seconds: float = setting(
        86_400.0, "streams silent this long lose their state", positive=True)
    anomaly_episode_gap: int = setting(
        3, "readings below the threshold that close an anomaly episode", positive=True)
    checkpoints: bool = setting(
        True, "keep stream states in the changelog topic and restore them on assignment "
        "(off: a restarted worker starts every stream's learning period again)")
    checkpoint_interval_seconds: float = setting(
        10.0, "how often changed stream states go to the changelog and offsets are committed",
        positive=True)
    transactional: bool = setting(
        False, "commit outputs, states and offsets in Kafka transactions (exactly-once for "
        "read_committed consumers; needs checkpoints)")
    max_future_seconds: float = setting(
        3600.0, "readings stamped further ahead of the worker's clock are dead-lettered as "
        "future (they would lock their stream out)", positive=True)
    max_abs_value: float = setting(
        1e15, "readings with a channel value of larger magnitude are dead-lettered as "
        "out_of_range", positive=True)
    max_stream_id_bytes: int = setting(
        256, "longer stream ids (UTF-8) are dead-lettered as stream_id_too_long",
        positive=True)
    max_streams: int = setting(
        0, "most streams one worker holds; beyond it the least recently seen are evicted "
        "(0: no limit)", minimum=0)
    max_stream_readings_per_batch: int = setting(
        100, "readings of one stream scored in one batch; from the next one on, the rest of "
        "its partition waits for the next batch, the partition paused meanwhile (a batch then "
        "takes at most this many step rounds, whatever one hot stream sends)", positive=True)
    reload_poll_seconds: float = setting(
        5.0, "how often the model artifact is checked for a new model (0: only on SIGHUP)",
        minimum=0)

    def _cross_check(self) -> None:
        if self.transactional and not self.checkpoints:
            raise SettingsError(
                "worker.transactional: expected worker.checkpoints to be on, because a "
                "transaction commits the checkpointed states with the offsets; received "
                "worker.checkpoints = false", key="worker.transactional")


@dataclasses.dataclass(frozen=True)
class ModelSettings(SettingsSection):
    """Which model artifact the worker, replay and evaluation use (and training writes)."""

    section_name: typing.ClassVar[str] = "model"

    artifact: Path = setting(Path("artifacts/model"), "model artifact directory")


@dataclasses.dataclass(frozen=True)
class MetricsSettings(SettingsSection):
    """The HTTP endpoint serving /metrics, /healthz and /readyz."""

    section_name: typing.ClassVar[str] = "metrics"

    host: str = setting("127.0.0.1", "address the metrics endpoint binds")
    port: int = setting(9108, "port of the metrics endpoint (0 picks a free one)",
                        minimum=0, maximum=65535)


@dataclasses.dataclass(frozen=True)
class TrainingSettings(SettingsSection):
    """Offline training hyperparameters; one set serves every stream."""

    section_name: typing.ClassVar[str] = "training"

    seed: int = setting(7, "random seed of weights, batches and synthetic data", minimum=0)
    epochs: int = setting(20, "maximum epochs (early stopping usually ends sooner)",
                          positive=True)
    batch_size: int = setting(256, "sequences per gradient step", positive=True)
    sequence_length: int = setting(64, "readings per training sequence", minimum=3)
    validation_fraction: float = setting(
        0.2, "latest share of each stream held out for validation", minimum=0.05, maximum=0.5)
    learning_rate: float = setting(1e-3, "Adam learning rate", positive=True)
    early_stopping_patience: int = setting(3, "epochs without improvement before stopping",
                                           positive=True)
    # 20 rather than the 32 before 2026-12-01: the benchmark protocols' models learn from a
    # few hundred readings each, where a wider memory is more to fit than there is to learn,
    # and every stream's record holds the cell's state (4 bytes a unit). Measured against 32
    # over training seeds 7, 8 and 9: NAB's standard score 63.0 -> 63.3 (its seeds spread
    # over 3 points); SKAB's F1 0.864 -> 0.867 and ROC AUC 0.898 -> 0.903 (higher at every
    # seed); on the demo's recording, anomalies found 39.0 -> 39.3 of 43, point-wise F1
    # 0.583 -> 0.611 (higher at every seed), episodes on a label 90 % -> 88 %. The record is
    # 976 bytes for 4 channels, not 1,024 (1,000 since layout v9 spent 24 of the 48 bytes
    # on the season test's covariances).
    memory_units: int = setting(20, "size of the memory cell state", positive=True)
    time_features: bool = setting(True, "encode time of day and week with the sine layer")
    hidden_units: int = setting(32, "width of the dense stack", positive=True)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole tree; build it with :func:`load_settings`."""

    kafka: KafkaSettings = dataclasses.field(default_factory=KafkaSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    training: TrainingSettings = dataclasses.field(default_factory=TrainingSettings)


SECTIONS: dict[str, type[SettingsSection]] = {
    field.name: field.default_factory  # type: ignore[misc]
    for field in dataclasses.fields(Settings)
}


def env_var_name(key: str) -> str:
    """``kafka.bootstrap_servers`` -> ``CELLWATCH_KAFKA_BOOTSTRAP_SERVERS``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def setting_keys() -> list[str]:
    """Every dotted key of the tree, in declaration order."""
    return [f"{name}.{field.name}" for name, section in SECTIONS.items()
            for field in dataclasses.fields(section)]


def load_settings(
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    override_origins: Mapping[str, str] | None = None,
) -> Settings:
    """Builds the settings tree from defaults, a TOML file, the environment and flag overrides.

    Args:
        config_path: TOML file with one table per section, or None.
        environ: the process environment (the CLI passes ``os.environ``); only
            ``CELLWATCH_<SECTION>_<FIELD>`` names of known sections are read.
        overrides: dotted keys (``"kafka.bootstrap_servers"``) from command-line flags.
        override_origins: per overridden key, how to name its source in errors
            (``"flag --bootstrap-servers"``).

    Raises:
        SettingsError: a file that cannot be read, an unknown key, or a bad value; the message
            names the key, its source, what was expected and what was received.
    """
    # Per key: (raw value, where it came from, whether it is text that needs parsing).
    raw: dict[str, tuple[Any, str, bool]] = {}
    if config_path is not None:
        for key, value in _read_toml(config_path).items():
            raw[key] = (value, f"config file {config_path}", False)
    for key, (value, source) in _from_environment(environ or {}).items():
        raw[key] = (value, source, True)
    for key, value in (overrides or {}).items():
        if key not in setting_keys():
            raise SettingsError(f"unknown setting {key!r} passed as a flag override")
        origin = (override_origins or {}).get(key, f"override of {key}")
        raw[key] = (value, origin, isinstance(value, str))

    sections: dict[str, SettingsSection] = {}
    for section_name, section_type in SECTIONS.items():
        hints = typing.get_type_hints(section_type)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(section_type):
            key = f"{section_name}.{field.name}"
            if key not in raw:
                continue
            value, source, from_text = raw[key]
            try:
                values[field.name] = coerce_value(hints[field.name], value, from_text=from_text)
            except TypeError as error:
                raise SettingsError(
                    f"{key} (from {source}): expected {describe_type(hints[field.name])}, "
                    f"received {shown_value(value, hints[field.name])} ({error})") from None
        try:
            sections[section_name] = section_type(**values)
        except SettingsError as error:
            if error.key in raw:
                where = f" (from {raw[error.key][1]})"
            else:
                sources = sorted({raw[f"{section_name}.{name}"][1] for name in values})
                where = f" (values from {', '.join(sources)})" if sources else ""
            raise SettingsError(f"{error}{where}", key=error.key) from None
    return Settings(**sections)  # type: ignore[arg-type]


def _read_toml(path: Path) -> dict[str, Any]:
    if path.exists() and not path.is_file():
        # A FIFO or device would block the read, or never end it.
        raise SettingsError(f"config file {path}: not a regular file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(f"config file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"config file {path}: cannot be read ({error})") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path}: not valid TOML: {error}") from None
    flat: dict[str, Any] = {}
    for section_name, table in document.items():
        if section_name not in SECTIONS:
            raise SettingsError(
                f"config file {path}: unknown section [{section_name}]; expected one of "
                f"{', '.join(f'[{name}]' for name in SECTIONS)}")
        if not isinstance(table, dict):
            raise SettingsError(
                f"config file {path}: expected [{section_name}] to be a table, "
                f"received a value of type {type(table).__name__}")
        known = {field.name for field in dataclasses.fields(SECTIONS[section_name])}
        for name, value in table.items():
            if name not in known:
                raise SettingsError(
                    f"config file {path}: unknown setting {section_name}.{name}; "
                    f"[{section_name}] knows {', '.join(sorted(known))}")
            flat[f"{section_name}.{name}"] = value
    return flat


def _from_environment(environ: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    by_env_name = {env_var_name(key): key for key in setting_keys()}
    section_prefixes = [f"{ENV_PREFIX}{name.upper()}_" for name in SECTIONS]
    found: dict[str, tuple[str, str]] = {}
    for name, value in environ.items():
        if name in by_env_name:
            found[by_env_name[name]] = (value, f"environment variable {name}")
            continue
        prefix = next((p for p in section_prefixes if name.startswith(p)), None)
        if prefix is not None:
            # A typo in a known section would otherwise be ignored silently.
            known = sorted(env for env in by_env_name if env.startswith(prefix))
            raise SettingsError(
                f"environment variable {name}: unknown setting; expected one of "
                f"{', '.join(known)}")
    return found
