"""Benchmark baseline: the worker with its processing taken out. Same consumer, same
per-partition transactional producers and offset commits; each raw record is re-produced
unchanged (no decoding, validation, database or encoding)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

from ingest_worker.config import Settings
from ingest_worker.devstack.topics import ensure_topics
from ingest_worker.encode import OutRecord
from ingest_worker.metrics import WorkerMetrics
from ingest_worker.pipeline import InRecord, Outcome
from ingest_worker.worker import Worker, running


class CopyWorker(Worker):
    async def process(self, records: list[InRecord]) -> Outcome:
        return Outcome(
            records=[
                OutRecord(
                    self.topics.accepted, b"", r.value or b"", [(k, v or b"") for k, v in r.headers]
                )
                for r in records
            ]
        )


async def main() -> None:
    base = Settings.from_env(os.environ)
    settings = dataclasses.replace(
        base,
        accepted_topic=base.accepted_topic + ".baseline",
        rejected_topic=base.rejected_topic + ".baseline",
        transactional_id_prefix="baseline",
    )
    bootstrap, database_url = str(settings.kafka_bootstrap_servers), str(settings.database_url)
    await ensure_topics(bootstrap, settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with running(settings, bootstrap, database_url, WorkerMetrics(), CopyWorker) as worker:
        await worker.run(stop)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
