"""A small chaos soak, through the same orchestrator as `make soak`: about 3,000 events over
HTTP and straight to the raw topic while one fault of each kind runs (a worker killed -9
mid-batch, one SIGTERMed, the group scaled 1 -> 3 -> 1, a broker killed -9 and restarted with
the shim answering through the outage, PostgreSQL stopped and started). Every acknowledged
item must come out exactly once, in order, with the stored events and devices to match.

It runs on the session's three-node cluster (its broker fault restarts the node it kills and
waits until every ISR is full again, so the cluster is left whole for the other tests)."""

from __future__ import annotations

import shutil

from devstack.kafka import Cluster
from ingest_worker.core.config import Settings
from soak.__main__ import Options, soak
from tests.integration.conftest import RUN_ID

EVENTS = 3_000
SEED = 11


async def test_small_soak_loses_duplicates_and_reorders_nothing(
    kafka_cluster: Cluster, settings: Settings
) -> None:
    """The verdict passes, every process behaved (no crash, clean exits on SIGTERM), each
    kind of fault was injected, and the shim answered during the broker outage."""
    out = (settings.stack_dir / "test-runs" / RUN_ID / "soak").resolve()
    options = Options(EVENTS, SEED, out, drain_timeout_s=60, verify_timeout_s=60)
    outcome = await soak(options, cluster=kafka_cluster)
    table = outcome.markdown.read_text()
    assert outcome.verdict.ok, table
    assert outcome.problems == [], outcome.problems
    assert outcome.verdict.acked >= EVENTS * 0.9, table
    found = outcome.faults
    assert found.get("worker_kill9", 0) + found.get("worker_kill9_idle", 0) == 1, found
    assert found.get("worker_sigterm") == 1, found
    assert found.get("scale_rebalance", 0) >= 3, found
    assert found.get("broker_kill9") == 1, found
    assert found.get("postgres_restart") == 1, found
    assert found.get("shim_broker_outage") == 1, found
    assert kafka_cluster.healthy()
    shutil.rmtree(out)  # kept when anything above fails, for the diagnosis
