"""Our librdkafka clients' pure parts: how their errors are logged, the shim producer's
settings, and the reference for Kafka's default partitioning."""

from __future__ import annotations

import logging

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from ingest_worker.core import rdkafka
from ingest_worker.core.logs import JsonFormatter, librdkafka_line
from ingest_worker.shim.publish import NOT_APPENDED, Sent, producer_config
from tests.partitioning import java_partition, murmur2

# Kafka's own test vectors for Utils.murmur2 (clients/src/test/.../UtilsTest.java).
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_error_is_logged_again_only_after_a_while() -> None:
    """A code never logged is news; a code logged before is not until REPEAT_LOG_S passed,
    whatever other codes came in between."""
    logged = {KafkaError._TRANSPORT: 100.0, KafkaError._ALL_BROKERS_DOWN: 100.1}
    assert rdkafka.worth_logging({}, KafkaError._TRANSPORT, 100.0)
    assert not rdkafka.worth_logging(logged, KafkaError._TRANSPORT, 100.0 + 29.9)
    assert rdkafka.worth_logging(logged, KafkaError._TRANSPORT, 100.0 + rdkafka.REPEAT_LOG_S)
    assert rdkafka.worth_logging(logged, KafkaError._RESOLVE, 100.5)


def test_error_log_keeps_a_down_broker_to_one_line_and_every_fatal_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker refusing every reconnect logs one warning per code per REPEAT_LOG_S; a fatal
    error is logged at ERROR every time and remembered."""
    clock = Clock()
    errors = rdkafka.ErrorLog(logging.getLogger("test.kafka"), clock)
    caplog.set_level(logging.WARNING, "test.kafka")
    for _ in range(50):
        errors(KafkaError(KafkaError._TRANSPORT, "Connection refused"))
        errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
        clock.now += 0.05
    fatal = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, "gap", fatal=True)
    errors(fatal)
    errors(fatal)
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.WARNING, logging.ERROR, logging.ERROR]
    assert errors.fatal == fatal


def test_error_code_reads_a_kafka_exception() -> None:
    """The code of the KafkaError a KafkaException carries; None when it carries none."""
    exc = KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS))
    assert rdkafka.error_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS
    assert rdkafka.error_code(KafkaException("no error object")) is None


def test_connection_failures_are_left_to_the_error_callback() -> None:
    """librdkafka's FAIL log lines (one per reconnect) are dropped; its other lines pass."""

    assert not librdkafka_line(_line("FAIL", logging.ERROR, "Connection refused"))
    assert librdkafka_line(_line("GETPID", logging.ERROR, "..."))


def _line(facility: str, level: int, text: str) -> logging.LogRecord:
    args = (facility, "rdkafka#producer-1", text)
    return logging.LogRecord("librdkafka", level, "", 0, "%s [%s] %s", args, None)


def test_a_state_librdkafka_retries_by_itself_is_information(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At start-up the broker's transaction coordinator may still be loading: librdkafka
    warns and retries. That line is INFO (dropped where INFO is not logged); other warnings
    stay warnings."""
    loading = (
        "[thrd:main]: Failed to acquire transactional PID from broker TxnCoordinator/1: "
        "Broker: Coordinator load in progress: retrying"
    )
    caplog.set_level(logging.INFO)
    transient = _line("GETPID", logging.WARNING, loading)
    assert librdkafka_line(transient)
    assert transient.levelname == "INFO"
    other = _line("MSGTIMEOUT", logging.WARNING, "3 messages timed out")
    assert librdkafka_line(other)
    assert other.levelname == "WARNING"
    caplog.set_level(logging.WARNING)
    assert not librdkafka_line(_line("GETPID", logging.WARNING, loading))


def test_uvicorns_lines_are_named_uvicorn_and_carry_no_terminal_colours() -> None:
    """uvicorn logs start-up and shutdown to "uvicorn.error"; a reader must not take them for
    errors, nor see escape codes in the JSON."""
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started", None, None)
    record.color_message = "\x1b[36mStarted\x1b[0m"
    entry = orjson.loads(JsonFormatter().format(record))
    assert (entry["logger"], entry["level"], entry["msg"]) == ("uvicorn", "info", "Started")
    assert "color_message" not in entry


def test_shim_producer_settings() -> None:
    """acks=all, each record sent once (no idempotent producer, no librdkafka retries: see
    publish.py), Java's murmur2 partitioning, sizes from the topic's limit (within
    librdkafka's bounds) and records that fail once their publish has given up."""
    small = producer_config(max_record_bytes=20_000, timeout_s=2.0, linger_ms=1)
    assert small["acks"] == "all"
    assert (small["enable.idempotence"], small["retries"]) == (False, 0)
    assert small["partitioner"] == "murmur2_random"
    assert (small["message.max.bytes"], small["batch.size"]) == (20_000, 20_000)
    assert small["message.timeout.ms"] == 2000
    big = producer_config(max_record_bytes=8_388_608, timeout_s=5.0, linger_ms=5)
    assert (big["message.max.bytes"], big["batch.size"]) == (8_388_608, 512 * 1024)
    tiny = producer_config(max_record_bytes=500, timeout_s=0.1, linger_ms=0)
    assert (tiny["message.max.bytes"], tiny["message.timeout.ms"]) == (1000, 1000)


def test_librdkafka_accepts_the_shim_producer_settings() -> None:
    """librdkafka takes every setting as given: it refuses unknown or out-of-range ones when
    the client is made (no broker needed; this one's address answers nothing)."""
    config = producer_config(max_record_bytes=1_048_588, timeout_s=5.0, linger_ms=1)
    errors = rdkafka.ErrorLog(logging.getLogger("test.kafka"))
    producer = Producer({**rdkafka.config("127.0.0.1:9", "test", errors), **config})
    producer.purge()
    assert producer.close()


def test_reference_partitioner_matches_kafka() -> None:
    """The reference murmur2 gives Kafka's own test vectors, and librdkafka's `murmur2`
    partitioner the same partitions."""
    import confluent_kafka

    assert {key: murmur2(key) for key in JAVA_MURMUR2} == JAVA_MURMUR2
    keys = [*JAVA_MURMUR2, *(f"7:device-{n}".encode() for n in range(200))]
    for partitions in (1, 3, 6, 7):
        expected = [java_partition(key, partitions) for key in keys]
        assert [confluent_kafka.murmur2(key, partitions) for key in keys] == expected


def test_a_publish_says_not_written_only_when_nothing_can_be_in_the_log() -> None:
    """Nothing sent, or every record refused before it was appended: not written. A record
    acknowledged, or records on their way when the publish gave up: unknown. Only the
    broker's refusals made before appending are sent again."""
    assert Sent().written() is False
    assert Sent(acknowledged=True).written() is None
    assert Sent(in_flight=True).written() is None
    assert KafkaError.NOT_ENOUGH_REPLICAS in NOT_APPENDED
    assert KafkaError.NOT_LEADER_FOR_PARTITION in NOT_APPENDED
    assert KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND not in NOT_APPENDED
    assert KafkaError._MSG_TIMED_OUT not in NOT_APPENDED
