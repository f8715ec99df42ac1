"""The API through a rolling restart of a three-node cluster: each node killed -9 under load,
then started again. Every partition of the raw topic must take events again soon after the
cluster is whole, without restarting the API, /readyz must say when publishing fails, and the
raw topic (read_committed, as the worker reads it) must hold every event answered 202 exactly
once, and none answered 503 "not written"."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from devstack.kafka import Cluster
from devstack.topics import ensure_topics
from ingest_worker.core.config import Settings
from tests.integration.apiserver import running_api
from tests.integration.kafka_read import header, read_topics
from tests.integration.pipeline_env import fresh_settings
from tests.integration.worker_env import TEMPLATE_SCHEMA, event_body, integration_with_type
from tests.partitioning import java_partition

PARTITIONS = 6
# After the cluster is whole again, every partition takes events within this long.
RECOVERY_S = 30.0
DOWN_S = 8.0  # how long a killed node stays down
REPORT_GRACE_S = 1.5  # a 503 may beat the delivery report that records its failure
ANSWER_GRACE_S = 0.5  # a success is reported to the shim just before its 202 is answered


@dataclass
class Seen:
    """What the load and the readiness probe saw, each with its time (monotonic)."""

    posts: list[tuple[float, int, int, str | None]] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    # Idempotency-Key of each post, by its answer: 202, 503 "not written", or "maybe" (a 503
    # whose outcome is unknown, or no answer yet when the load stopped).
    keys: dict[str, set[str]] = field(default_factory=lambda: {"202": set(), "no": set()})
    maybe: set[str] = field(default_factory=set)

    def answered(self, key: str, answer: httpx.Response) -> None:
        self.maybe.discard(key)
        if answer.status_code == 202:
            self.keys["202"].add(key)
        elif "was not written" in answer.json().get("detail", ""):
            self.keys["no"].add(key)
        else:
            self.maybe.add(key)

    def failing_windows(self, partition: int) -> list[tuple[float, float]]:
        """Spans from a failed publish to the partition's next accepted one, each end moved
        in by what separates the answer from the delivery report the shim goes by."""
        windows, failed_at = [], None
        for t, p, status, _ in self.posts:
            if p != partition:
                continue
            if status != 202 and failed_at is None:
                failed_at = t
            elif status == 202 and failed_at is not None:  # its report came before the 202
                windows.append((failed_at + REPORT_GRACE_S, t - ANSWER_GRACE_S))
                failed_at = None
        return windows

    def accepted_after(self, partition: int, since: float) -> float | None:
        """When the partition first took an event at or after `since`."""
        times = [t for t, p, status, _ in self.posts if p == partition and status == 202]
        later = [t for t in times if t >= since]
        return min(later) if later else None


def devices_by_partition(integration_id: int) -> dict[int, str]:
    """One external device id per raw partition: the shim keys an event by
    `{integration}:{device}`, with Java's partitioner."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < PARTITIONS:
        device = f"roll-{n}"
        key = f"{integration_id}:{device}".encode()
        found.setdefault(java_partition(key, PARTITIONS), device)
        n += 1
    return found


async def _load(
    client: httpx.AsyncClient, path: str, partition: int, body: dict[str, object], seen: Seen
) -> None:
    """Events for one partition, one after another, each with a key of its own, until
    cancelled."""
    for n in itertools.count():
        key = f"roll-{partition}-{n}"
        seen.maybe.add(key)
        answer = await client.post(path, json=body, headers={"idempotency-key": key})
        code = answer.json().get("code") if answer.status_code != 202 else None
        seen.posts.append((time.monotonic(), partition, answer.status_code, code))
        seen.answered(key, answer)
        if answer.status_code != 202:
            assert answer.status_code == 503, answer.text
            assert code == "kafka_unavailable"
            assert "retry-after" in answer.headers
        await asyncio.sleep(0.05)


async def _probe(client: httpx.AsyncClient, seen: Seen) -> None:
    while True:
        asked = time.monotonic()  # it judges as of the request, then asks the broker
        answer = await client.get("/readyz")
        seen.ready.append((asked, answer.status_code))
        await asyncio.sleep(0.25)


async def _until_ready(client: httpx.AsyncClient) -> None:
    """Ready again once the failures it saw are settled (a success, or their age)."""
    for _ in range(60):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.5)
    raise AssertionError("/readyz never said ready again")


async def _until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def _roll(cluster: Cluster, node: int, seen: Seen) -> tuple[float, float]:
    """Kill one node, start it again, wait until the cluster is whole: (killed, whole) times."""
    cluster.kill(node)
    killed = time.monotonic()
    await asyncio.sleep(DOWN_S)
    cluster.spawn(node)  # on this thread: the JVM lives as long as the one that spawned it
    await asyncio.to_thread(cluster.wait_started, node)
    await asyncio.to_thread(cluster.wait_healthy, 180)
    return killed, time.monotonic()


async def _running(tasks: list[asyncio.Task[None]], body: Awaitable[None]) -> None:
    """Await `body` while the tasks run; a task that failed fails the test with its error."""
    try:
        await body
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, Exception)]
        if failures:
            raise failures[0]


async def _raw_holds_what_was_answered(bootstrap: str, topic: str, seen: Seen) -> None:
    """Every key answered 202 once on the raw topic, none twice, none answered "not
    written" (a 503 whose outcome was unknown may be there, once)."""
    accepted = seen.keys["202"]
    records = await read_topics(
        bootstrap, [topic], until=lambda rs: len(rs) >= len(accepted), timeout_s=60, grace_s=3
    )
    found = Counter((header(r, "idempotency-key") or b"").decode() for r in records)
    assert not [k for k in accepted if found[k] != 1], "a 202 missing or duplicated"
    assert not [k for k, n in found.items() if n > 1], "an event written twice"
    assert not [k for k in seen.keys["no"] if found[k]], "a 'not written' event was written"
    assert set(found) <= accepted | seen.maybe


async def test_every_partition_takes_events_again_after_each_node_restarts(
    kafka_cluster: Cluster, settings: Settings, api_database: str
) -> None:
    own = fresh_settings(settings)
    bootstrap = kafka_cluster.bootstrap
    await ensure_topics(bootstrap, own, partitions=PARTITIONS)
    seen, rolls = Seen(), []
    async with running_api(own, bootstrap, api_database) as api, api.client() as client:
        integration_id, type_id = await integration_with_type(client, TEMPLATE_SCHEMA, None)
        path = f"/v1/integrations/{integration_id}/events"
        loads = [
            asyncio.create_task(
                _load(
                    client, path, p, event_body(type_id, {"store": "s"}, device_external_id=d), seen
                )
            )
            for p, d in devices_by_partition(integration_id).items()
        ]

        async def roll_all() -> None:
            await _until(lambda: len(seen.posts) >= 60, 60, "no load")
            for node in sorted(kafka_cluster.nodes):
                rolls.append(await _roll(kafka_cluster, node, seen))
                await _until(
                    lambda: all(seen.accepted_after(p, rolls[-1][1]) for p in range(PARTITIONS)),
                    RECOVERY_S,
                    f"a partition takes no events {RECOVERY_S} s after node {node} is back",
                )

        await _running([*loads, asyncio.create_task(_probe(client, seen))], roll_all())
        await _until_ready(client)
    await _raw_holds_what_was_answered(bootstrap, own.raw_topic, seen)
    for partition in range(PARTITIONS):
        for start, end in seen.failing_windows(partition):
            lied = [t for t, status in seen.ready if start <= t <= end and status == 200]
            around = [x for x in seen.posts if start - 3 <= x[0] <= end + 3]
            assert not lied, (
                f"/readyz said ready while partition {partition} failed, "
                f"in {start:.2f}..{end:.2f} at {lied}; posts around: {around}"
            )
