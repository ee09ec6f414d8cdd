"""What stops a command before it can work, said in one line with a documented exit code.

Exit codes of every command (README.md, "Exit codes"):

- 0: done;
- 1: a problem with the input: data, labels, model artifact, output path;
- 2: a usage or settings error (the message names the flag or setting);
- 3: output records were not delivered to Kafka (nothing of them was committed);
- 4: the metrics endpoint cannot listen on its address (port taken, address not local);
- 5: Kafka cannot be reached or refuses us at start: no broker accepts a connection within
  ``kafka.startup_timeout_seconds``, or the TLS or SASL handshake fails;
- 6: a topic the worker needs is missing or has the wrong shape, at start or while it runs
  (e.g. the changelog deleted and auto-created with one partition and no compaction); the
  message says what to do. A restart exits the same way until an operator fixes the topic.

The checks run in the order that fails fastest and changes nothing: the metrics port is bound
before any Kafka client starts (so a second worker on one port does not first create topics),
and a plain TCP connection to the brokers is tried, with one log line, before kafka-python's
clients (whose bootstrap logs an ERROR line per attempt) are created.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from kafka.errors import BrokerResponseError, KafkaError, SaslAuthenticationFailedError

from streaming.ports import TopicSetupError

log = logging.getLogger(__name__)

EXIT_INPUT_PROBLEM = 1
EXIT_USAGE_OR_SETTINGS = 2
EXIT_DELIVERY_FAILURE = 3
EXIT_METRICS_ADDRESS = 4
EXIT_KAFKA_UNAVAILABLE = 5
EXIT_TOPIC_PROBLEM = 6


class StartupError(RuntimeError):
    """The environment does not let the command start; ``exit_code`` says which part."""

    exit_code = 1


class MetricsAddressError(StartupError):
    exit_code = EXIT_METRICS_ADDRESS


class KafkaUnavailableError(StartupError):
    exit_code = EXIT_KAFKA_UNAVAILABLE


def metrics_address_error(host: str, port: int, error: OSError) -> MetricsAddressError:
    reason = error.strerror or str(error)
    return MetricsAddressError(
        f"metrics endpoint {host}:{port}: cannot listen ({reason}); another process (another "
        f"worker?) may hold the port: set metrics.port (CELLWATCH_METRICS_PORT) to a free one")


def _endpoint(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_brokers(servers: Sequence[str], timeout_s: float,
                     connect: Callable[..., socket.socket] = socket.create_connection,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep,
                     stop: threading.Event | None = None) -> bool:
    """Returns True once one of ``servers`` accepts a TCP connection, False as soon as
    ``stop`` is set (a SIGTERM while waiting); raises :class:`KafkaUnavailableError` when
    none accepts within ``timeout_s``.

    A broker that is still starting (a compose stack, a pod next to its broker) is waited for,
    with one log line instead of one per attempt.
    """
    deadline = clock() + timeout_s
    last_errors: dict[str, str] = {}
    announced = False
    pause = sleep if stop is None else stop.wait
    while True:
        if stop is not None and stop.is_set():
            return False
        for server in servers:
            remaining = max(0.1, min(5.0, deadline - clock()))
            try:
                connect(_endpoint(server), timeout=remaining).close()
                return True
            except OSError as error:
                last_errors[server] = error.strerror or str(error) or type(error).__name__
        if clock() >= deadline:
            reasons = "; ".join(f"{server}: {reason}" for server, reason in last_errors.items())
            raise KafkaUnavailableError(
                f"no Kafka broker accepted a connection within {timeout_s:g} s ({reasons}); "
                f"is the broker running, and is kafka.bootstrap_servers "
                f"(CELLWATCH_KAFKA_BOOTSTRAP_SERVERS) right?")
        if not announced:
            log.info("waiting up to %g s for a Kafka broker at %s", timeout_s,
                     ", ".join(servers))
            announced = True
        pause(min(1.0, max(0.0, deadline - clock())))


def _confluent_errors() -> tuple[type[BaseException], ...]:
    """confluent-kafka's exception type when it is installed (it is an extra)."""
    try:
        from confluent_kafka import KafkaException
    except ImportError:
        return ()
    return (KafkaException,)


def _confluent_startup_error(servers: Sequence[str], exception: BaseException) -> Exception:
    """The start-up error of what confluent-kafka raised while the clients started."""
    from confluent_kafka import KafkaError

    error = exception.args[0] if exception.args else None
    code = error.code() if isinstance(error, KafkaError) else None
    if code in (KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION):
        return KafkaUnavailableError(
            f"Kafka at {', '.join(servers)}: SASL authentication failed ({error}); check "
            f"kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password")
    if code is not None and code > 0:  # a broker's answer, not a local (negative) error
        return TopicSetupError(
            f"Kafka refused a request while setting up the worker's topics: {error}; "
            f"create the topics yourself (see deploy/README.md) or grant the worker's "
            f"principal the rights to")
    return KafkaUnavailableError(
        f"Kafka at {', '.join(servers)}: cannot start the clients ({error}); the brokers "
        f"accept connections, so check kafka.security_protocol and the kafka.sasl_* and "
        f"kafka.ssl_* settings against the listener (librdkafka's log lines above have the "
        f"reason)")


@contextlib.contextmanager
def kafka_startup(servers: Sequence[str]) -> Iterator[None]:
    """Turns what kafka-python (or confluent-kafka) raises while the clients start (a
    bootstrap that times out, a refused TLS or SASL handshake) into one
    :class:`KafkaUnavailableError` line, and a broker's refusal of a topic request into a
    :class:`TopicSetupError` (exit code 6)."""
    try:
        yield
    except SaslAuthenticationFailedError as error:
        raise KafkaUnavailableError(
            f"Kafka at {', '.join(servers)}: SASL authentication failed ({error}); check "
            f"kafka.sasl_mechanism, kafka.sasl_username and kafka.sasl_password") from None
    except BrokerResponseError as error:
        # The broker answered, and refused a request about a topic (not authorized, an
        # invalid replication factor, ...): a topic problem, not an unreachable Kafka.
        raise TopicSetupError(
            f"Kafka refused a request while setting up the worker's topics: {error!r}; "
            f"create the topics yourself (see deploy/README.md) or grant the worker's "
            f"principal the rights to") from None
    except (KafkaError, ssl.SSLError) as error:
        raise KafkaUnavailableError(
            f"Kafka at {', '.join(servers)}: cannot start the clients ({error}); the brokers "
            f"accept connections, so check kafka.security_protocol and the kafka.sasl_* and "
            f"kafka.ssl_* settings against the listener (the log lines above have "
            f"kafka-python's reason); a transactional worker also waits here for a "
            f"transaction a stopped worker left open, which the broker aborts after "
            f"transaction.timeout.ms") from None
    except _confluent_errors() as error:
        raise _confluent_startup_error(servers, error) from None
