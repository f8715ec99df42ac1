"""`python -m soak --events N --seed S --out DIR [--readme README.md]`: the chaos soak.

Starts the stack (three Kafka nodes, PostgreSQL, the API, a worker group), drives N events
while the seeded faults run, lets the workers drain the raw topic, verifies the outputs
against the ledger (`soak.verify`), writes the report (`soak.report`) and prints its table.
Exits non-zero unless the verdict passes and no process misbehaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.kafka import Cluster
from soak import faults, report
from soak.drive import Drive, Record, admin_client, drive, gateway_producer, prepare
from soak.faults import Fault, Gate, Injector
from soak.stack import Stack, running_stack
from soak.verify import Verdict, verify

log = logging.getLogger("soak")

STALL_S = 400.0  # longer than an HTTP item's retries: only a drive stuck for good fails
MIN_DRIVE_S = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    """A run: its size and seed, where its report goes, and its limits."""

    events: int
    seed: int
    out: Path
    readme: Path | None = None
    rate_per_s: float | None = None  # default: paced to span the faults
    keep_data: bool = False  # keep Kafka's and PostgreSQL's data after a passing run
    drain_timeout_s: float = 300.0
    verify_timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run found: the verdict, the faults injected by kind, what the processes did
    wrong, the drive's counts, and the report's files."""

    verdict: Verdict
    faults: dict[str, int]
    problems: list[str]
    stats: dict[str, int]
    markdown: Path
    data: Path
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.verdict.ok and not self.problems


@dataclass
class _Run:
    """What one run collects while the stack is up."""

    verdict: Verdict = field(default_factory=Verdict)
    faults: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)


def default_rate(events: int, plan: list[Fault]) -> float:
    """Events per second that make the drive last about as long as the faults."""
    return events / max(MIN_DRIVE_S, faults.planned_s(plan, events))


async def soak(options: Options, cluster: Cluster | None = None) -> Outcome:
    """The whole run, on `cluster` if given (left whole and healthy) or on its own."""
    started = time.monotonic()
    plan = faults.schedule(options.seed, options.events)
    rate = options.rate_per_s or default_rate(options.events, plan)
    log.info("soak: %d events at %.0f/s, %d faults", options.events, rate, len(plan))
    run = _Run()
    async with running_stack(options.out / "stack", cluster) as stack:
        await _drive_and_verify(stack, plan, rate, options, run)
    wall_s = time.monotonic() - started
    markdown, data = report.write(
        run.verdict, run.faults, options.seed, options.events, wall_s, options.out
    )
    _write_extras(options.out, stack.problems.found, run.stats, plan)
    if options.readme is not None:
        _update_readme(options.readme, markdown)
    found = list(stack.problems.found)
    outcome = Outcome(run.verdict, run.faults, found, run.stats, markdown, data, wall_s)
    if outcome.ok and not options.keep_data:
        _drop_data(options.out / "stack")
    return outcome


def _drop_data(stack_dir: Path) -> None:
    """Kafka's and PostgreSQL's data of a passing run (hundreds of MB for a full one); the
    logs, ledger and report stay. A failing run keeps everything, for the diagnosis."""
    for data in [*stack_dir.glob("kafka/node-*/data"), stack_dir / "postgres" / "data"]:
        shutil.rmtree(data, ignore_errors=True)


async def _drive_and_verify(
    stack: Stack, plan: list[Fault], rate: float, options: Options, run: _Run
) -> None:
    """Drive while the faults run, make the stack whole, drain, verify."""
    ledger_path = options.out / "ledger.jsonl"
    injector = Injector(stack)
    with ledger_path.open("w", encoding="utf-8") as file:
        record = Record(file, stack.problems)
        async with admin_client(stack.api.url) as client:
            world = await prepare(client)
            producer = gateway_producer(stack.bootstrap)
            gate = Gate()
            driving = drive(
                stack, world, client, producer, record,
                events=options.events, rate_per_s=rate, gate=gate, seed=options.seed,
            )  # fmt: skip
            await _together(driving, injector, plan, gate)
    log.info("drive done; making the stack whole and draining")
    await stack.restore()
    await stack.drain(options.drain_timeout_s)
    run.faults = injector.counts(record.answers)
    run.stats = dict(sorted(record.stats.items()))
    settings = stack.settings
    run.verdict = await asyncio.to_thread(
        verify,
        ledger_path,
        stack.bootstrap,
        settings.accepted_topic,
        settings.rejected_topic,
        stack.postgres.url,
        options.verify_timeout_s,
    )


async def _together(driving: Drive, injector: Injector, plan: list[Fault], gate: Gate) -> None:
    """The drive and the faults at once; either failing stops both."""
    async with asyncio.TaskGroup() as group:
        group.create_task(driving.run())
        group.create_task(injector.run(plan, gate, driving, STALL_S))


def _write_extras(out: Path, problems: list[str], stats: dict[str, int], plan: list[Fault]) -> None:
    """drive.json beside the report: the schedule, the drive's counts, the processes'
    problems."""
    body: dict[str, Any] = {
        "schedule": [asdict(fault) for fault in plan],
        "stats": stats,
        "problems": problems,
    }
    (out / "drive.json").write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _update_readme(readme: Path, markdown: Path) -> None:
    try:
        report.update_readme(readme, markdown.read_text(encoding="utf-8"))
    except ValueError as exc:
        log.warning("README not updated: %s", exc)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="default .local/soak/<time>")
    parser.add_argument("--readme", type=Path, default=None, help="update its results section")
    parser.add_argument("--rate", type=float, default=None, help="events/s (default: paced)")
    parser.add_argument(
        "--keep-data", action="store_true", help="keep Kafka's and PostgreSQL's data on a pass"
    )
    return parser


def _print(outcome: Outcome) -> None:
    print(outcome.markdown.read_text(encoding="utf-8"))
    print(f"drive: {json.dumps(outcome.stats)}")
    for problem in outcome.problems:
        print(f"problem: {problem}")
    print(f"report: {outcome.markdown} {outcome.data}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or Path(".local") / "soak" / stamp).resolve()
    options = Options(args.events, args.seed, out, args.readme, args.rate, args.keep_data)
    with suppress(KeyboardInterrupt):
        outcome = asyncio.run(soak(options))
        _print(outcome)
        return 0 if outcome.ok else 1
    return 130


if __name__ == "__main__":
    sys.exit(main())
