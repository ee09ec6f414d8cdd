"""KafkaRecordSink's failures say what happened: a timeout only when something timed out."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError, UnknownError

from streaming.kafka_io import KafkaRecordSink
from streaming.ports import OutputError


class _FailingProducer:
    def __init__(self, send_error: Exception | None = None,
                 flush_error: Exception | None = None) -> None:
        self.send_error, self.flush_error = send_error, flush_error

    def send(self, topic, **_record):
        if self.send_error is not None:
            raise self.send_error
        return _DoneFuture()

    def flush(self, timeout=None):
        if self.flush_error is not None:
            raise self.flush_error

    def close(self, timeout=None):
        self.closed = True
        self.flush(timeout)  # as kafka-python's close does, before it stops its thread


class _DoneFuture:
    def failed(self) -> bool:
        return False


def _sink(producer: _FailingProducer) -> KafkaRecordSink:
    # The constructor connects to a broker; these tests need only the error handling.
    sink = object.__new__(KafkaRecordSink)
    sink._producer, sink._pending = producer, []
    sink._best_effort_producer, sink._dropped_at_send = None, 0
    sink._transactional = sink._in_transaction = False
    return sink


def test_a_failure_at_once_is_not_reported_as_a_timeout() -> None:
    sink = _sink(_FailingProducer(flush_error=UnknownError("Future not done")))
    sink.send("scores", b"k", b"v")
    with pytest.raises(OutputError) as caught:
        sink.flush(timeout_s=60.0)
    assert "not delivered" in str(caught.value) and "Future not done" in str(caught.value)
    assert "within" not in str(caught.value)


def test_a_timeout_says_how_long_it_waited() -> None:
    sink = _sink(_FailingProducer(flush_error=KafkaTimeoutError("Timeout waiting for future")))
    sink.send("scores", b"k", b"v")
    with pytest.raises(OutputError, match=r"not acknowledged within 60\.0 s"):
        sink.flush(timeout_s=60.0)


def test_a_send_refused_by_the_producer_is_an_output_error_naming_the_topic() -> None:
    sink = _sink(_FailingProducer(send_error=MessageSizeTooLargeError("too large")))
    with pytest.raises(OutputError, match=r"record for 'scores' refused: "
                                          r"MessageSizeTooLargeError"):
        sink.send("scores", b"k", b"v")


def test_closing_after_a_failed_flush_does_not_replace_the_output_error() -> None:
    """After a batch the broker refused as too large was split, kafka-python's flush fails
    with "Future not done" every time, and its close flushes first: the worker closing its
    sink on the way out raised that UnknownError in place of the OutputError (a traceback
    and exit code 1 instead of one line and exit code 3; found by the fault-injection
    suite)."""
    outputs = _FailingProducer(flush_error=UnknownError("Future not done"))
    letters = _FailingProducer(flush_error=UnknownError("Future not done"))
    sink = _sink(outputs)
    sink._best_effort_producer = letters
    sink.send("scores", b"k", b"v")
    with pytest.raises(OutputError):
        sink.flush(timeout_s=60.0)
    sink.close()
    assert outputs.closed and letters.closed


def test_a_broker_lost_while_the_changelog_is_read_is_an_output_failure() -> None:
    """A raw KafkaConnectionError out of a restore ended `cellwatch run` with a traceback
    and exit code 1 (found by the fault-injection suite); it is an OutputError (exit 3:
    nothing was committed since, a restart restores again)."""
    from kafka.errors import KafkaConnectionError

    from streaming.kafka_io import KafkaChangelogReader

    class _LostConsumer:
        def assign(self, _partitions):
            pass

        def seek_to_beginning(self, *_partitions):
            pass

        def end_offsets(self, _partitions):
            raise KafkaConnectionError("connection reset")

    reader = object.__new__(KafkaChangelogReader)
    reader.topic, reader._consumer = "changelog", _LostConsumer()
    with pytest.raises(OutputError, match=r"changelog 'changelog' could not be read to "
                                          r"restore states: KafkaConnectionError"):
        list(reader.read([0, 1]))
