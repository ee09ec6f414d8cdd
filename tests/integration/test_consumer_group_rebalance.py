"""The reading source's consumer-group behaviour against a real broker.

A new member is assigned its partitions in one rebalance: kafka-python 3.0.12 took its
snapshot of the topic's partitions before it had metadata after subscribing, and most starts
ended with a second, needless rebalance as soon as the next metadata arrived.

kafka-python 3.0.12 also lost a rejoin that only a metadata change had asked for when the
JoinGroup/SyncGroup outlived the poll that started it and finished before the next poll: the
consumer then never applied its new assignment, stopped heartbeating, and polled forever
without partitions (``streaming.kafka_io.keep_rejoin_requested_until_joined`` explains it).
On a loaded machine this stalled a worker right after its first assignment; here the same
sequence is made deterministic: a revoke callback slower than the poll timeout (as a
checkpoint on a busy machine) and a pause between polls (as the worker's own work).

Both run with each client (``kafka.client``). confluent-kafka's group uses the
cooperative-sticky assignor, whose rebalances hand over only the partitions that move: a
member then learns of added partitions alone, so the tests follow the partitions a member
holds rather than the last assignment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from kafka.admin import NewPartitions

from cellwatch.kafka_clients import kafka_client as client_of
from cellwatch.settings import KafkaSettings
from streaming.ports import ReadingSource

pytestmark = pytest.mark.integration

POLL_TIMEOUT_MS = 100
SLOW_REVOKE_S = 0.3  # longer than the poll timeout: the join is still in flight when it ends
BETWEEN_POLLS_S = 0.2  # long enough for the join to finish before the next poll
# A lost rejoin never recovers; a kept one takes a metadata refresh and two short joins.
ASSIGNMENT_BUDGET_S = 20.0
STARTS = 4  # without the fix, most starts rebalanced twice: four single ones are no luck
WATCH_AFTER_ASSIGNMENT_S = 1.5  # the second rebalance followed the first within 0.3 s


class RecordingListener:
    """Records assignments; its revoke callback takes ``revoke_s`` (a worker checkpoints)."""

    def __init__(self, revoke_s: float = 0.0) -> None:
        self.revoke_s = revoke_s
        self.assignments: list[list[int]] = []
        self.held: set[int] = set()

    def on_assigned(self, partitions: Sequence[int]) -> None:
        self.assignments.append(list(partitions))
        self.held.update(partitions)

    def on_revoked(self, partitions: Sequence[int]) -> dict[int, int]:
        time.sleep(self.revoke_s)
        self.held.difference_update(partitions)
        return {}

    def on_lost(self, partitions: Sequence[int]) -> None:
        pass


def reading_source(client: str, bootstrap: str, topic: str, group: str,
                   listener: RecordingListener, **options: object) -> ReadingSource:
    """The worker's reading source of ``client`` (plus client-specific ``options``)."""
    chosen = client_of(KafkaSettings(client=client, bootstrap_servers=(bootstrap,)))
    return chosen.reading_source({**chosen.options, **options}, topic, group, listener,
                                 session_timeout_ms=6000)


def poll_until(source: ReadingSource, done, budget_s: float, pause_s: float = 0.0) -> bool:
    deadline = time.monotonic() + budget_s
    while not done():
        if time.monotonic() > deadline:
            return False
        source.poll(POLL_TIMEOUT_MS, 10)
        time.sleep(pause_s)
    return True


def assignments_of_one_start(client: str, bootstrap: str, topic: str, group: str
                             ) -> list[list[int]]:
    """Every assignment a new member got until shortly after its first one."""
    listener = RecordingListener()
    source = reading_source(client, bootstrap, topic, group, listener)
    try:
        assert poll_until(source, lambda: listener.assignments, ASSIGNMENT_BUDGET_S)
        watch_until = time.monotonic() + WATCH_AFTER_ASSIGNMENT_S
        poll_until(source, lambda: time.monotonic() > watch_until, ASSIGNMENT_BUDGET_S)
    finally:
        source.close()
    return listener.assignments


def test_a_new_member_gets_its_partitions_in_one_rebalance(
        kafka_broker, topic_factory, unique_name, kafka_client):
    for start in range(STARTS):
        topic = topic_factory(partitions=4, purpose="readings")
        assignments = assignments_of_one_start(kafka_client, kafka_broker.bootstrap, topic,
                                               unique_name("group"))
        assert assignments == [[0, 1, 2, 3]], f"start {start}: {assignments}"


def test_a_rebalance_outliving_one_poll_still_delivers_the_new_assignment(
        kafka_broker, topic_factory, kafka_admin, unique_name, kafka_client):
    topic = topic_factory(partitions=1, purpose="readings")
    listener = RecordingListener(revoke_s=SLOW_REVOKE_S)
    # Metadata refreshed every 0.5 s: the new partition is seen soon after it is created.
    refresh = ({"metadata_max_age_ms": 500} if kafka_client == "kafka-python"
               else {"topic.metadata.refresh.interval.ms": 500})
    source = reading_source(kafka_client, kafka_broker.bootstrap, topic,
                            unique_name("group"), listener, **refresh)
    try:
        assert poll_until(source, lambda: [0] in listener.assignments, ASSIGNMENT_BUDGET_S)
        # Only the metadata asks for this rebalance: the group leader sees a new partition.
        kafka_admin.create_partitions({topic: NewPartitions(total_count=2)})
        assigned = poll_until(source, lambda: listener.held == {0, 1},
                              ASSIGNMENT_BUDGET_S, pause_s=BETWEEN_POLLS_S)
        assert assigned, (f"partitions [0, 1] never assigned within {ASSIGNMENT_BUDGET_S} s "
                          f"(assignments: {listener.assignments}): the rejoin was lost")
    finally:
        source.close()
