"""CPU per record of the worker's pure path, from a raw record to its Avro output: decode,
validate, template, encode and size. No services: PostgreSQL's part is a found device.

    PYTHONPATH=. .venv/bin/python bench/records.py

Best of 7 runs of 20,000 records, one templated event, in microseconds; kept in
bench/results.json under "worker_pure_path".
"""

from __future__ import annotations

import time
import uuid

import orjson
from workload import save_results

from ingest_worker.core.rejections import Rejection, Source
from ingest_worker.core.validate import compile_type
from ingest_worker.worker import pipeline
from ingest_worker.worker.decode import RawEvent
from ingest_worker.worker.resolve import Device

EVENT_TYPE = compile_type(
    {
        "integration_id": 1,
        "id": 1,
        "version": 1,
        "schema": {
            "type": "object",
            "required": ["store"],
            "properties": {"store": {"type": "string"}, "n": {"type": "integer"}},
        },
        "external_device_id_template": "{store}",
        "duration_ms": 0,
        "buffer_ms": 0,
    }
)
BODY = orjson.dumps(
    {
        "integration_event_type_id": 1,
        "timestamp": "2024-06-01T12:00:00Z",
        "attributes": {"store": "S042", "n": 3},
    }
)
HEADERS: list[tuple[str, bytes | None]] = [
    ("integration-id", b"1"),
    ("event-id", str(uuid.uuid4()).encode()),
    ("received-at", b"1700000000000"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]
RECORD = pipeline.InRecord(Source("raw", 0, 1), BODY, HEADERS, 1_700_000_000_000)
TOPICS = pipeline.Topics("accepted", "rejected")


def one() -> None:
    """One record from raw to output."""
    event = pipeline.decode_record(RECORD)
    assert isinstance(event, RawEvent)
    ref = pipeline.plan(event, {1}, {(1, 1): EVENT_TYPE})
    assert not isinstance(ref, Rejection)
    _, verdict = pipeline.output(
        pipeline.Accepted(event, EVENT_TYPE, ref, Device(5, ref.external_id, None)), TOPICS
    )
    assert isinstance(verdict, pipeline.Accepted)


def main() -> None:
    best_s = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(20_000):
            one()
        best_s = min(best_s, (time.perf_counter() - started) / 20_000)
    print(f"worker pure path: {best_s * 1e6:.2f} µs per record")
    save_results("worker_pure_path", {"us_per_record_best_of_7": round(best_s * 1e6, 2)})


if __name__ == "__main__":
    main()
