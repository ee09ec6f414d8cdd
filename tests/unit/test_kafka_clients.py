"""Choosing the Kafka client (``kafka.client``) and passing the settings through to it."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest

from cellwatch.kafka_clients import confluent_client_config, kafka_client
from cellwatch.settings import KafkaSettings, SettingsError, load_settings


def test_kafka_python_is_the_default_client() -> None:
    settings = load_settings(environ={})
    assert settings.kafka.client == "kafka-python"
    client = kafka_client(settings.kafka)
    assert client.name == "kafka-python"
    assert client.options["bootstrap_servers"] == ["127.0.0.1:19092"]


def test_an_unknown_client_is_refused_naming_the_setting_and_the_choices() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={"CELLWATCH_KAFKA_CLIENT": "librdkafka"})
    assert str(raised.value) == (
        "kafka.client: expected one of kafka-python, confluent, received 'librdkafka' "
        "(from environment variable CELLWATCH_KAFKA_CLIENT)")


def test_confluent_without_its_package_says_which_extra_to_install(monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None
                        if name == "confluent_kafka" else real_find_spec(name, *args))
    with pytest.raises(SettingsError) as raised:
        KafkaSettings(client="confluent")
    message = str(raised.value)
    assert message.startswith("kafka.client: expected kafka-python when the confluent-kafka "
                              "package is not installed")
    assert "pip install 'cellwatch[confluent]'" in message
    assert "received 'confluent'" in message


def test_confluent_gets_its_own_adapters_and_librdkafka_properties() -> None:
    pytest.importorskip("confluent_kafka")
    from streaming.confluent_io import ConfluentReadingSource, ConfluentRecordSink

    client = kafka_client(KafkaSettings(client="confluent",
                                        bootstrap_servers=("a:9092", "b:9093")))
    assert client.name == "confluent"
    assert client.reading_source is ConfluentReadingSource
    assert client.record_sink is ConfluentRecordSink
    assert client.options["bootstrap.servers"] == "a:9092,b:9093"
    assert client.options["security.protocol"] == "plaintext"
    assert not any("sasl" in key or "ssl" in key for key in client.options)


def test_security_settings_pass_through_under_librdkafka_names(tmp_path: Path) -> None:
    files = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        files[name] = tmp_path / name
        files[name].write_text("not a real certificate")
    kafka = load_settings(environ={
        "CELLWATCH_KAFKA_CLIENT": "confluent",
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "CELLWATCH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "CELLWATCH_KAFKA_SASL_USERNAME": "reader",
        "CELLWATCH_KAFKA_SASL_PASSWORD": "hunter2",
        "CELLWATCH_KAFKA_SSL_CAFILE": str(files["ca.pem"]),
        "CELLWATCH_KAFKA_SSL_CERTFILE": str(files["client.pem"]),
        "CELLWATCH_KAFKA_SSL_KEYFILE": str(files["client.key"]),
        "CELLWATCH_KAFKA_SSL_PASSWORD": "key-secret",
        "CELLWATCH_KAFKA_CLIENT_ID": "worker-7",
        "CELLWATCH_KAFKA_REQUEST_TIMEOUT_MS": "12000",
    }).kafka
    config = confluent_client_config(kafka)
    assert isinstance(config.pop("logger"), logging.Logger)
    assert config == {
        "bootstrap.servers": "127.0.0.1:19092",
        "client.id": "worker-7",
        "security.protocol": "sasl_ssl",
        "socket.timeout.ms": 12000,
        "socket.nagle.disable": True,
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "reader",
        "sasl.password": "hunter2",
        "ssl.ca.location": str(files["ca.pem"]),
        "ssl.certificate.location": str(files["client.pem"]),
        "ssl.key.location": str(files["client.key"]),
        "ssl.key.password": "key-secret",
    }


def test_librdkafka_accepts_every_property_the_settings_map_to(tmp_path: Path) -> None:
    """librdkafka refuses an unknown property name when a client is created: the mapping's
    names are checked against the real library, without a broker."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    kafka = load_settings(environ={
        "CELLWATCH_KAFKA_CLIENT": "confluent",
        "CELLWATCH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CELLWATCH_KAFKA_SASL_MECHANISM": "PLAIN",
        "CELLWATCH_KAFKA_SASL_USERNAME": "reader",
        "CELLWATCH_KAFKA_SASL_PASSWORD": "hunter2",
        "CELLWATCH_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }).kafka
    producer = confluent_kafka.Producer(confluent_client_config(kafka))
    producer.flush(0)
    with pytest.raises(confluent_kafka.KafkaException, match="No such configuration property"):
        confluent_kafka.Producer({**confluent_client_config(kafka), "sasl.mechanism.typo": "x"})


def test_the_run_flag_chooses_the_client_and_names_itself_in_errors() -> None:
    from click.testing import CliRunner

    from cellwatch.cli import main

    result = CliRunner().invoke(main, ["run", "--kafka-client", "librdkafka"], env={})
    assert result.exit_code == 2
    assert "--kafka-client" in result.output and "'librdkafka' is not one of" in result.output
