"""Fixtures that run real servers: a Kafka broker (per session) and Prometheus (per test).

Missing system tools (Java 17+, Maven, prometheus) skip these tests with the install command,
except under ``CI=true`` where they fail: CI must not go green by silently skipping them.
Set ``CELLWATCH_TEST_KAFKA_BOOTSTRAP=host:port`` to use an already running broker instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from deploy.kafka import local_broker
from tests.integration import servers

KAFKA_BOOTSTRAP_ENV = "CELLWATCH_TEST_KAFKA_BOOTSTRAP"

# Kafka topic names allow [a-zA-Z0-9._-] (max 249). '.' and '_' collide in Kafka's metric names,
# so only '-' is used as a separator.
_ILLEGAL_NAME_CHARS = re.compile(r"[^a-zA-Z0-9-]+")


def _unavailable(what: str, missing: Sequence[str]) -> None:
    reason = f"{what} need: " + "; ".join(missing)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"{reason} (required under CI=true; run bash deploy/install-system-deps.sh)",
            pytrace=False,
        )
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local_broker.KafkaBroker | local_broker.ExternalKafka]:
    """A real broker for the whole session; ``.bootstrap`` is its ``host:port``.

    Tests that stop or kill it must check ``.managed`` (False for an external broker).
    """
    external = os.environ.get(KAFKA_BOOTSTRAP_ENV, "").strip()
    if external:
        yield local_broker.ExternalKafka(external)
        return
    missing = local_broker.kafka_missing_requirements()
    if missing:
        _unavailable("the Kafka integration tests", missing)
    broker = local_broker.KafkaBroker(tmp_path_factory.mktemp("kafka"))
    try:
        broker.start()
    except local_broker.BrokerError as exc:
        # Stop whatever half-started before reporting: a stray JVM would outlive the session.
        with contextlib.suppress(local_broker.BrokerError):
            broker.stop()
        pytest.fail(f"could not start the local Kafka broker:\n{exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The worker's Kafka client (``kafka.client``): a test that takes this fixture runs
    once with each, since every promise of the worker must hold with both."""
    return request.param


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` -> e.g. ``test-roundtrip-orders-3f2a9c1b``: unique per call,
    readable in broker logs, legal as a Kafka topic name and consumer group id."""
    test_part = _ILLEGAL_NAME_CHARS.sub("-", request.node.name).strip("-")[:80]

    def make(purpose: str = "") -> str:
        parts = [test_part, _ILLEGAL_NAME_CHARS.sub("-", purpose).strip("-"), uuid.uuid4().hex[:8]]
        return "-".join(p for p in parts if p)

    return make


@pytest.fixture
def kafka_admin(
    kafka_broker: local_broker.KafkaBroker | local_broker.ExternalKafka,
) -> Iterator[KafkaAdminClient]:
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap, client_id="cellwatch-tests")
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def topic_factory(
    kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=4)`` creates a fresh topic, waits until every partition has a
    leader, and returns its name. The topics are deleted after the test so that a long-lived
    external broker does not fill up."""
    created: list[str] = []

    def create(
        partitions: int = 1, purpose: str = "topic", configs: Mapping[str, str] | None = None
    ) -> str:
        name = unique_name(purpose)
        spec = {
            "num_partitions": partitions,
            "replication_factor": 1,
            "configs": dict(configs or {}),
        }
        kafka_admin.create_topics({name: spec}, wait_for_metadata=True)
        created.append(name)
        return name

    yield create
    if created:
        # Best effort: a test that stopped or killed the broker must not turn cleanup into an
        # error that hides its own result.
        with contextlib.suppress(KafkaError):
            kafka_admin.delete_topics(created, raise_errors=False)


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., servers.PrometheusServer]]:
    """``prometheus_factory(["127.0.0.1:9100"])`` starts a real Prometheus scraping those targets
    every second and returns the ready ``PrometheusServer``; all are stopped after the test."""
    missing = servers.prometheus_missing_requirements()
    if missing:
        _unavailable("the Prometheus integration tests", missing)
    started: list[servers.PrometheusServer] = []

    def start(
        targets: Sequence[str] | Mapping[str, Sequence[str]], **options: object
    ) -> servers.PrometheusServer:
        server = servers.PrometheusServer(
            tmp_path / f"prometheus-{len(started)}", targets, **options
        )
        server.start()
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
