"""The settings tree: precedence, validation messages, redaction."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from cellwatch.settings import (
    KafkaSettings,
    Secret,
    Settings,
    SettingsError,
    WorkerSettings,
    env_var_name,
    load_settings,
    setting_keys,
)
from cellwatch.settings_display import as_plain_dict, render_toml
from tests.unit.special_files import fed_fifo


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cellwatch.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_valid_and_frozen() -> None:
    settings = load_settings()
    assert settings == Settings()
    assert settings.kafka.bootstrap_servers == ("127.0.0.1:19092",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.kafka.group_id = "other"  # type: ignore[misc]


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
[kafka]
group_id = "from-file"
client_id = "from-file"
readings_topic = "from-file"

[worker]
max_poll_records = 100
""")
    environ = {
        "CELLWATCH_KAFKA_CLIENT_ID": "from-env",
        "CELLWATCH_KAFKA_READINGS_TOPIC": "from-env",
        "CELLWATCH_TRAINING_EPOCHS": "5",
    }
    settings = load_settings(config, environ, {"kafka.readings_topic": "from-flag"})
    assert settings.kafka.group_id == "from-file"  # file beats default
    assert settings.kafka.client_id == "from-env"  # environment beats file
    assert settings.kafka.readings_topic == "from-flag"  # flag beats environment
    assert settings.worker.max_poll_records == 100
    assert settings.training.epochs == 5  # parsed from text
    assert settings.worker.poll_timeout_ms == WorkerSettings().poll_timeout_ms  # untouched


def test_environment_text_is_parsed_per_type() -> None:
    settings = load_settings(environ={
        "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2",
        "CELLWATCH_TRAINING_TIME_FEATURES": "no",
        "CELLWATCH_TRAINING_LEARNING_RATE": "0.01",
        "CELLWATCH_MODEL_ARTIFACT": "/tmp/model",
    })
    assert settings.kafka.bootstrap_servers == ("a:1", "b:2")
    assert settings.training.time_features is False
    assert settings.training.learning_rate == pytest.approx(0.01)
    assert settings.model.artifact == Path("/tmp/model")


def test_unrelated_environment_variables_are_ignored() -> None:
    settings = load_settings(environ={"CELLWATCH_TEST_KAFKA_BOOTSTRAP": "x", "HOME": "/root"})
    assert settings == Settings()


@pytest.mark.parametrize(
    ("environ", "expected_fragments"),
    [
        ({"CELLWATCH_WORKER_MAX_POLL_RECORDS": "many"},
         ["worker.max_poll_records", "CELLWATCH_WORKER_MAX_POLL_RECORDS", "an integer", "'many'"]),
        ({"CELLWATCH_WORKER_MAX_POLL_RECORDS": "0"},
         ["worker.max_poll_records", "greater than 0", "0"]),
        ({"CELLWATCH_KAFKA_SECURITY_PROTOCOL": "TLS"},
         ["kafka.security_protocol", "one of PLAINTEXT, SSL", "'TLS'"]),
        ({"CELLWATCH_TRAINING_TIME_FEATURES": "maybe"},
         ["training.time_features", "true or false", "'maybe'"]),
        ({"CELLWATCH_TRAINING_VALIDATION_FRACTION": "0.9"},
         ["training.validation_fraction", "at most 0.5", "0.9"]),
        ({"CELLWATCH_TRAINING_LEARNING_RATE": "nan"},
         ["training.learning_rate", "a number", "'nan'"]),
        ({"CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "localhost"},
         ["kafka.bootstrap_servers", "host:port", "'localhost'"]),
        ({"CELLWATCH_KAFKA_SCORES_TOPIC": "bad topic!"},
         ["kafka.scores_topic", "Kafka topic name", "'bad topic!'"]),
        ({"CELLWATCH_KAFKA_BOOTSTRAP_SERVER": "a:1"},
         ["CELLWATCH_KAFKA_BOOTSTRAP_SERVER", "unknown setting",
          "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS"]),
    ],
)
def test_bad_values_name_key_source_expected_and_received(
    environ: dict[str, str], expected_fragments: list[str]
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ=environ)
    message = str(caught.value)
    for fragment in expected_fragments:
        assert fragment in message, message


def test_bad_file_values_name_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[metrics]\nport = "http"\n')
    with pytest.raises(SettingsError, match=r"metrics\.port \(from config file .*cellwatch\.toml"
                                            r"\): expected an integer, received 'http'"):
        load_settings(config)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[kafka\n", "not valid TOML"),
        ("[kafak]\ngroup_id = 'x'\n", "unknown section [kafak]"),
        ("[kafka]\ngroupid = 'x'\n", "unknown setting kafka.groupid"),
        ("kafka = 3\n", "expected [kafka] to be a table"),
    ],
)
def test_bad_files_are_reported_with_their_path(tmp_path: Path, text: str, fragment: str) -> None:
    config = write_config(tmp_path, text)
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert fragment in str(caught.value)
    assert str(config) in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml: not found"):
        load_settings(tmp_path / "nope.toml")


def test_sasl_needs_mechanism_and_credentials() -> None:
    with pytest.raises(SettingsError, match=r"kafka\.sasl_mechanism: expected one of"):
        KafkaSettings(security_protocol="SASL_SSL")
    with pytest.raises(SettingsError, match="no password"):
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u")
    ok = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                       sasl_username="u", sasl_password=Secret("p"))
    assert ok.sasl_password is not None and ok.sasl_password.reveal() == "p"


def test_topics_must_differ() -> None:
    with pytest.raises(SettingsError, match="five different topic names"):
        KafkaSettings(scores_topic="same", anomalies_topic="same")


def test_the_changelog_belongs_to_the_group_unless_named() -> None:
    assert KafkaSettings(group_id="plant-3").state_changelog_topic == "plant-3.state-changelog"
    assert KafkaSettings(changelog_topic="states").state_changelog_topic == "states"
    with pytest.raises(SettingsError, match="five different topic names"):
        KafkaSettings(changelog_topic="cellwatch.scores")
    with pytest.raises(SettingsError, match=r"kafka\.changelog_topic: expected a Kafka topic"):
        KafkaSettings(changelog_topic="bad name")


def test_transactions_need_checkpoints() -> None:
    assert WorkerSettings(transactional=True).checkpoints
    with pytest.raises(SettingsError, match=r"worker\.transactional: expected worker\.checkpoints "
                                            r"to be on") as raised:
        WorkerSettings(transactional=True, checkpoints=False)
    assert raised.value.key == "worker.transactional"


def test_direct_construction_is_validated_and_normalised() -> None:
    settings = KafkaSettings(bootstrap_servers=["a:1", "b:2"])  # type: ignore[arg-type]
    assert settings.bootstrap_servers == ("a:1", "b:2")
    with pytest.raises(SettingsError, match=r"worker\.max_poll_records: expected an integer"):
        WorkerSettings(max_poll_records="10")  # type: ignore[arg-type]


def test_secrets_are_redacted_everywhere(tmp_path: Path) -> None:
    config = write_config(tmp_path, """
[kafka]
security_protocol = "SASL_SSL"
sasl_mechanism = "PLAIN"
sasl_username = "reader"
sasl_password = "hunter2"
""")
    settings = load_settings(config)
    assert settings.kafka.sasl_password == Secret("hunter2")
    for text in (render_toml(settings), repr(settings), str(as_plain_dict(settings))):
        assert "hunter2" not in text
        assert "**********" in text
    assert as_plain_dict(settings, redact=False)["kafka"]["sasl_password"] == "hunter2"


def test_rendered_toml_reads_back_to_the_same_settings(tmp_path: Path) -> None:
    original = load_settings(environ={"CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2",
                                      "CELLWATCH_TRAINING_TIME_FEATURES": "false"})
    text = render_toml(original)
    tomllib.loads(text)  # valid TOML
    assert load_settings(write_config(tmp_path, text)) == original


def test_every_key_has_an_environment_variable() -> None:
    keys = setting_keys()
    assert "kafka.bootstrap_servers" in keys
    assert env_var_name("kafka.bootstrap_servers") == "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS"
    assert len({env_var_name(key) for key in keys}) == len(keys)


@pytest.mark.parametrize("key", ["sasl_password", "ssl_password"])
@pytest.mark.parametrize("value", ["31337", "[\"hunter2\", 31337]", "{ word = \"hunter2\" }"])
def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path, key: str, value: str) -> None:
    config = write_config(tmp_path, f"[kafka]\n{key} = {value}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    message = str(caught.value)
    assert f"kafka.{key}" in message and "expected a string (secret)" in message
    assert "31337" not in message and "hunter2" not in message


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "GSSAPI"])
def test_sasl_mechanisms_without_a_password_are_refused(mechanism: str) -> None:
    with pytest.raises(SettingsError) as caught:
        KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                      sasl_username="u", sasl_password=Secret("p"))
    message = str(caught.value)
    assert "kafka.sasl_mechanism" in message and mechanism in message
    assert "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in message


def test_tls_files_must_exist_and_be_readable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    with pytest.raises(SettingsError, match=r"kafka\.ssl_cafile: expected a readable file, "
                                            r"received '.*ca\.pem' \(not found\)"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=ca)
    with pytest.raises(SettingsError, match=r"kafka\.ssl_keyfile: .*\(not a regular file\)"):
        KafkaSettings(security_protocol="SSL", ssl_keyfile=tmp_path)
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert KafkaSettings(security_protocol="SSL", ssl_cafile=ca).ssl_cafile == ca
    config = write_config(tmp_path, f"[kafka]\nssl_certfile = {str(tmp_path / 'no.pem')!r}\n")
    with pytest.raises(SettingsError, match=r"kafka\.ssl_certfile: .*not found.*from config "
                                            r"file"):
        load_settings(config)


def test_a_config_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    with fed_fifo(tmp_path / "settings.toml", "[kafka]\n") as fifo, pytest.raises(
            SettingsError, match=r"settings\.toml: not a regular file"):
        load_settings(fifo)


def test_training_defaults_are_the_libraries_defaults() -> None:
    # The settings are what `cellwatch train` and `evaluate` use; TrainingOptions and
    # ForecasterConfig repeat their defaults for library callers, who must get the same model.
    from cellwatch.wiring import training_options
    from detector.model import ForecasterConfig
    from training.trainer import TrainingOptions

    from_settings = training_options(load_settings(environ={}).training)
    library = TrainingOptions()
    for field in dataclasses.fields(TrainingOptions):
        if field.name not in ("scorer", "verbose"):
            assert getattr(from_settings, field.name) == getattr(library, field.name), field.name
    forecaster = ForecasterConfig(channels=1)
    assert (forecaster.memory_units, forecaster.hidden_units) == (
        from_settings.memory_units, from_settings.hidden_units)
