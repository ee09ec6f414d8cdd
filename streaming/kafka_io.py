"""Kafka adapters of the worker's ports, with kafka-python.

Consumers commit manually (``enable_auto_commit=False``); producers are idempotent with
``acks="all"``, so an acknowledged record is on every in-sync replica.

kafka-python 3.0 runs rebalance callbacks on the consumer's IO thread, where a blocking
consumer call (such as a synchronous commit) raises. The listener adapter is therefore an
``AsyncConsumerRebalanceListener``: the worker checkpoints in the callback (through the
producer, which has an IO thread of its own) and the adapter awaits the commit of the
offsets the worker hands back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import __version__ as kafka_version
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from streaming.ports import OutputError, PartitionListener, SourceRecord, TopicSetupError

log = logging.getLogger(__name__)

# Errors that say the broker will never take this record, however often it is sent.
REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError,
                    CorruptRecordError, InvalidTimestampError)


class _ListenerAdapter(AsyncConsumerRebalanceListener):
    # kafka-python awaits these on its IO thread while the worker's thread waits in poll().
    def __init__(self, topic: str, listener: PartitionListener, consumer: KafkaConsumer
                 ) -> None:
        self.topic = topic
        self.listener = listener
        self.consumer = consumer

    def _partitions(self, partitions) -> list[int]:
        return sorted(tp.partition for tp in partitions if tp.topic == self.topic)

    async def on_partitions_assigned(self, assigned) -> None:
        self.listener.on_assigned(self._partitions(assigned))

    async def on_partitions_revoked(self, revoked) -> None:
        offsets = self.listener.on_revoked(self._partitions(revoked))
        if not offsets:
            return
        try:
            await self.consumer.commit_async(_offsets(self.topic, offsets))
        except Exception as error:  # the group may already have moved on
            log.warning("commit of revoked partitions' offsets failed (%s); their next owner "
                        "restores the checkpoint and skips what it reflects", error)

    async def on_partitions_lost(self, lost) -> None:
        self.listener.on_lost(self._partitions(lost))


def keep_rejoin_requested_until_joined(consumer: KafkaConsumer) -> bool:
    """Workaround for a consumer that stops consuming after a rebalance (kafka-python 3.0.12).

    kafka-python decides whether to (re)join the group in ``need_rejoin()``
    (``kafka/coordinator/consumer.py``; the join loop is ``join_group_async`` in ``base.py``):
    true when its ``rejoin_needed`` flag is set, or when the group leader sees that the topic
    metadata changed since its last assignment (``_assignment_snapshot`` differs from
    ``_metadata_snapshot``). Only the flag is cleared by a completed join; the metadata
    condition is cleared as a side effect of the leader *starting* its assignment. A
    ``poll(timeout_ms)`` that ends while the JoinGroup/SyncGroup it started is still in
    flight leaves that join unfinished, and the next poll re-enters it only while
    ``need_rejoin()`` holds. So when a rebalance that only the metadata asked for outlives
    one poll (a slow revoke callback, a loaded machine) and finishes before the next poll,
    ``need_rejoin()`` is false from then on: the assignment is never applied, the heartbeat
    (disabled during the join) never resumes, the broker evicts the member after
    ``session_timeout_ms``, and the consumer polls forever without partitions and without
    an error.

    The Java client fixed the same flaw in KAFKA-9815 (apache/kafka#8420) by setting the
    flag whenever the metadata condition asks for a rejoin; this does the same for this
    consumer's coordinator: once a rejoin is needed it stays needed until a join completes.
    A join whose task finished unobserved is then sent again (one more, short rebalance)
    instead of being lost. Harmless with a kafka-python that already behaves so; remove it
    once kafka-python sets the flag itself.

    Returns whether the workaround is in place (False, with a warning, when kafka-python's
    internals no longer look as expected).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    request_rejoin = getattr(coordinator, "request_rejoin", None)
    if need_rejoin is None or request_rejoin is None:
        log.warning("kafka-python %s: consumer coordinator without need_rejoin/request_rejoin; "
                    "the rejoin workaround is not applied", kafka_version)
        return False

    def rejoin_until_joined() -> bool:
        if need_rejoin():
            request_rejoin()  # cleared only by a completed join
            return True
        return False

    coordinator.need_rejoin = rejoin_until_joined
    return True


def release_parked_records(consumer: KafkaConsumer) -> bool:
    """Workaround for a resumed partition that is never fetched again (kafka-python 3.0.12).

    kafka-python keeps what it had fetched for a partition that is then paused (its port of
    KAFKA-7548, dpkp/kafka-python#2981): parsed records are parked in the fetcher's
    ``_paused_partition_records`` and the partition is left out of fetch requests while they
    are parked. ``_fetched_records`` moves parked records back in line only when its in-line
    slot, ``_next_partition_records``, is None; but records another partition drained stay
    in that slot (empty, not None) until the next fetch response replaces them. When no
    response comes (the other partitions are read to their end) the resumed partition's
    parked records are never returned and it is never fetched again: the worker's pacing
    (:mod:`streaming.pacing`) resumed a partition and waited forever for it
    (``tests/integration/test_source_pause_kafka.py``). Emptying a drained slot, as the loop
    does itself when a response replaces it, lets the parked records move back in line.
    Called before every poll; a no-op unless records are parked. Remove it once kafka-python
    restores parked records whenever the slot is empty.

    Returns whether it emptied the slot.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if not parked:
        return False
    current = getattr(fetcher, "_next_partition_records", None)
    # A PartitionRecords is false once drained (its iterator is gone); drain() already ran.
    if current is None or current:
        return False
    fetcher._next_partition_records = None
    return True


def _offsets(topic: str, next_offsets: Mapping[int, int]) -> dict:
    return {TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in next_offsets.items()}


class KafkaReadingSource:
    """The readings topic, consumed in a group with manual commits.

    Args:
        client_options: kafka-python connection and security options.
        topic: the readings topic.
        group_id: the workers' consumer group.
        listener: told of assigned, revoked and lost partitions.
        max_partition_fetch_bytes: per-partition fetch size (bigger polls, fewer round trips).
        session_timeout_ms: how long a silent (crashed) worker keeps its partitions.
    """

    def __init__(self, client_options: Mapping[str, Any], topic: str, group_id: str,
                 listener: PartitionListener,
                 max_partition_fetch_bytes: int = 4 * 1024 * 1024,
                 session_timeout_ms: int = 10_000) -> None:
        self.topic = topic
        self._commit_timeout_ms = min(5_000, session_timeout_ms)
        self._consumer = KafkaConsumer(
            **client_options,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=max(100, min(3000, session_timeout_ms // 3)),
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=max(max_partition_fetch_bytes, 50 * 1024 * 1024),
        )
        self._positions: dict[int, int] = {}
        # kafka-python may join the group before it has the topic's metadata, and its
        # assignor then hands out no partitions for good (dpkp/kafka-python#2377); loading the
        # metadata before the first poll (which joins the group) closes that window. Checked
        # before subscribing: a subscription's metadata request may auto-create the topic.
        if not self._consumer.partitions_for_topic(topic):
            self._consumer.close(autocommit=False)
            raise TopicSetupError(f"the readings topic {topic!r} does not exist or has no "
                                  f"partitions")
        keep_rejoin_requested_until_joined(self._consumer)
        self._consumer.subscribe([topic], listener=_ListenerAdapter(topic, listener,
                                                                    self._consumer))
        # kafka-python takes its snapshot of the subscribed topics' partitions from metadata
        # that arrives after subscribing; without a fetch here the first assignment is made
        # against an empty snapshot, and the next metadata refresh (which the assignment
        # itself requests) forces a second, needless rebalance right after most starts.
        self._consumer.topics()

    def poll(self, timeout_ms: int, max_records: int) -> list[SourceRecord]:
        release_parked_records(self._consumer)
        batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records: list[SourceRecord] = []
        for partition, batch in batches.items():
            records.extend(batch)
            self._positions[partition.partition] = batch[-1].offset + 1
        return records

    def commit(self, next_offsets: Mapping[int, int]) -> None:
        # Bounded: kafka-python retries a commit during a rebalance until its timeout, and
        # the rebalance cannot finish while this thread waits instead of polling.
        self._consumer.commit(_offsets(self.topic, next_offsets),
                              timeout_ms=self._commit_timeout_ms)

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def rewind(self, partitions: Sequence[int]) -> None:
        for partition in partitions:
            tp = TopicPartition(self.topic, partition)
            committed = self._consumer.committed(tp)
            if committed is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, committed)
            self._positions.pop(partition, None)

    def pause(self, partitions: Sequence[int]) -> None:
        # kafka-python raises for a partition not assigned (its state is gone).
        tps = self._assigned_of(partitions)
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Sequence[int]) -> None:
        tps = self._assigned_of(partitions)
        if tps:
            self._consumer.resume(*tps)

    def _assigned_of(self, partitions: Sequence[int]) -> list[TopicPartition]:
        assigned = self._consumer.assignment()
        return [tp for tp in (TopicPartition(self.topic, p) for p in partitions)
                if tp in assigned]

    def lag(self) -> dict[int, int]:
        lags = {}
        for tp in self._consumer.assignment():
            end = self._consumer.highwater(tp)
            position = self._positions.get(tp.partition)
            if end is not None and position is not None:
                lags[tp.partition] = max(0, end - position)
        return lags

    def close(self) -> None:
        # Closing leaves the group, which runs the revoke callback for owned partitions.
        self._consumer.close(autocommit=False)


class KafkaRecordSink:
    """Publishes output records; :meth:`flush` waits for all acknowledgements.

    Args:
        client_options: kafka-python connection and security options.
        linger_ms: how long the producer gathers records into one request.
        transactional_id: when given, records go out in transactions (begun at the first
            record after a commit) that :meth:`commit_transaction` commits together with the
            consumer offsets. The id must be unique per worker and stable across its
            restarts: a restarted worker with the same id fences its predecessor and aborts
            its open transaction at once.

    Best-effort records (dead letters) go through a producer of their own, without
    idempotence, when there are no transactions: kafka-python's idempotent producer treats a
    record the broker refuses for good as fatal and fails every record in flight with it
    (and the producer for good), so one refused dead letter would fail the outputs too. In
    a transaction every record must commit together, so there is one producer, and a
    refused dead letter fails the transaction.
    """

    def __init__(self, client_options: Mapping[str, Any], linger_ms: int = 5,
                 transactional_id: str | None = None) -> None:
        extra: dict[str, Any] = {}
        if transactional_id is not None:
            extra = {"transactional_id": transactional_id, "transaction_timeout_ms": 60_000}
        self._producer = KafkaProducer(
            **client_options,
            acks="all",
            linger_ms=linger_ms,
            batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
            **extra,
        )
        self._pending: list[tuple[Any, bool]] = []  # (future, best effort)
        self._dropped_at_send = 0  # best-effort records the producer refused outright
        self._best_effort_producer = None if transactional_id is not None else KafkaProducer(
            **client_options, acks="all", enable_idempotence=False, linger_ms=linger_ms,
            batch_size=512 * 1024, max_request_size=8 * 1024 * 1024)
        self._transactional = transactional_id is not None
        self._in_transaction = False
        if self._transactional:
            self._producer.init_transactions()

    @property
    def transactional(self) -> bool:
        return self._transactional

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = (), partition: int | None = None,
             best_effort: bool = False) -> None:
        if self._transactional and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True
        best_effort = best_effort and self._best_effort_producer is not None
        producer = self._best_effort_producer if best_effort else self._producer
        try:
            future = producer.send(topic, value=value, key=key, headers=list(headers) or None,
                                   partition=partition)
        except REFUSED_FOR_GOOD as error:
            if not best_effort:
                raise OutputError(f"record for {topic!r} refused: {error!r}") from error
            log.error("a dead letter for %s refused by the producer and dropped: %r", topic,
                      error)
            self._dropped_at_send += 1
            return
        except (KafkaError, ValueError) as error:
            # The topic's metadata did not arrive within max_block_ms, or the partition is
            # gone (the topic was recreated with fewer partitions): a delivery failure like
            # any other, not a bug.
            raise OutputError(f"record for {topic!r} not accepted by the producer: "
                              f"{error!r}") from error
        self._pending.append((future, best_effort))

    def flush(self, timeout_s: float = 60.0) -> int:
        pending, self._pending = self._pending, []
        dropped, self._dropped_at_send = self._dropped_at_send, 0
        deadline = time.monotonic() + timeout_s
        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaTimeoutError as error:
            raise OutputError(f"output records not acknowledged within {timeout_s} s: "
                              f"{error}") from error
        except KafkaError as error:  # failed at once: no wait to speak of
            raise OutputError(f"output records not delivered: {error!r}") from error
        failed: list[BaseException] = []
        first_dropped: BaseException | None = None
        for future, best_effort in pending:
            if not best_effort:
                if future.failed():
                    failed.append(future.exception)
                continue
            # Awaited one by one, not with the producer's flush(): after splitting a batch
            # the broker refused as too large, kafka-python's flush() can end in "Future not
            # done" although every record's own future completes.
            try:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
            except REFUSED_FOR_GOOD as error:
                dropped += 1
                first_dropped = first_dropped or error
            except KafkaError as error:
                failed.append(error)
        if failed:
            raise OutputError(f"{len(failed)} of {len(pending)} output records failed; first: "
                              f"{failed[0]!r}")
        if first_dropped is not None:
            log.error("dead letters refused by the broker and dropped (first: %r); their "
                      "readings stay rejected", first_dropped)
        return dropped

    def commit_transaction(self, topic: str, next_offsets: Mapping[int, int],
                           group_metadata: object) -> None:
        if not self._transactional:
            raise RuntimeError("commit_transaction on a sink without transactions")
        if not self._in_transaction:
            if not next_offsets:
                return
            self._producer.begin_transaction()
            self._in_transaction = True
        try:
            if next_offsets:
                self._producer.send_offsets_to_transaction(_offsets(topic, next_offsets),
                                                           group_metadata)
            self._producer.commit_transaction()
        except KafkaError as error:
            raise OutputError(f"transaction not committed: {error}") from error
        self._in_transaction = False

    def abort_transaction(self) -> None:
        if not self._in_transaction:
            return
        self._pending = []
        try:
            self._producer.abort_transaction()
        except KafkaError as error:
            raise OutputError(f"transaction not aborted: {error}") from error
        self._in_transaction = False

    def close(self) -> None:
        """Closes both producers. Never raises a Kafka error: a worker closes its sink on
        the way out of a failure too, and an error here (kafka-python's close flushes first,
        and after it split a batch the broker refused as too large its flush fails with
        "Future not done" every time) would replace the failure that stopped the worker, an
        OutputError meant to end it with exit code 3, by a traceback and exit code 1.
        Nothing depends on the close: what was committed had been acknowledged before."""
        # An open transaction is aborted by the broker (or fenced by our successor).
        for producer in (self._best_effort_producer, self._producer):
            if producer is None:
                continue
            try:
                producer.close(timeout=10)
            except KafkaError as error:
                log.warning("a producer did not close cleanly (%r); records it still held "
                            "were never acknowledged, so nothing of them was committed",
                            error)


class KafkaChangelogReader:
    """Reads changelog partitions from their start to their current end, without a group.

    Args:
        client_options: kafka-python connection and security options.
        topic: the changelog topic.
        read_committed: skip records of aborted transactions (set with transactional
            outputs).
    """

    def __init__(self, client_options: Mapping[str, Any], topic: str,
                 read_committed: bool = False) -> None:
        self.topic = topic
        self._consumer = KafkaConsumer(
            **client_options,
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )

    def read(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(partition, key, value)`` of every record of ``partitions`` up to their ends.

        Raises:
            OutputError: the broker went away (or refused) while the changelog was read:
                the worker stops like after an output failure (exit code 3); nothing was
                committed since, so a restarted worker restores again.
        """
        try:
            yield from self._records(partitions)
        except KafkaError as error:
            raise OutputError(f"the changelog {self.topic!r} could not be read to restore "
                              f"states: {error!r}") from error

    def _records(self, partitions: Sequence[int]) -> Iterator[tuple[int, bytes, bytes | None]]:
        wanted = [TopicPartition(self.topic, p) for p in partitions]
        if not wanted:
            return
        self._consumer.assign(wanted)
        self._consumer.seek_to_beginning(*wanted)
        ends = {tp: offset for tp, offset in self._consumer.end_offsets(wanted).items()}
        remaining = {tp for tp in wanted if ends[tp] > self._consumer.position(tp)}
        while remaining:
            for tp, batch in self._consumer.poll(timeout_ms=500, max_records=100_000).items():
                for record in batch:
                    if record.offset < ends[tp]:
                        yield tp.partition, record.key, record.value
            remaining = {tp for tp in remaining if self._consumer.position(tp) < ends[tp]}
        self._consumer.assign([])

    def close(self) -> None:
        self._consumer.close()
