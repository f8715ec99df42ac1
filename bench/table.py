"""The README's table of measured figures, rendered from bench/results.json (written by the
bench scripts), printed, and written into README.md between its bench-results markers.

    .venv/bin/python bench/table.py [--readme README.md]

One row per figure, in ORDER: what was measured, its baseline measured in the same run, the
target and whether that run met it. The figure is the median of its runs by the target's
measure (of two runs, the worse), and every run is listed beside it; then, per command, when
it ran, the load average at its end and its wall time, and each load generator's own CPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"
ORDER = [
    "device_growth",
    "end_to_end",
    "api_vs_bare",
    "imports",
    "quix_peer",
    "worker_vs_naive",
    "worker_vs_passthrough",
    "floor_vs_passthrough",
    "worker_partitions",
    "worker_store",
    "api_sync_vs_async",
    "event_list",
    "kafka_ceiling",
]
Entry = dict[str, Any]


def render(results: dict[str, Entry]) -> str:
    """The table, then the commands and the load generators."""
    entries = [(key, results[key]) for key in ORDER if "figure" in results.get(key, {})]
    commands = list(dict.fromkeys(e["command"] for _, e in entries))
    lines = [
        "Written by `make bench` (bench/table.py, from bench/results.json). Each figure is one "
        "run's: the median of its runs by the target's measure (of two, the worse), every run "
        "listed beside it.",
        "",
        "| figure | measured | baseline in the same run | target | met |",
        "|---|---|---|---|---|",
    ]
    for _, e in entries:
        number = commands.index(e["command"]) + 1
        lines.append(
            f"| {e['figure']} [{number}] | {_measured(e)} | {_baseline(e)} "
            f"| {e['target'] or e.get('role') or '—'} | {_met(e['met'])} |"
        )
    missing = [key for key in ORDER if key not in dict(entries)]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    lines += ["", "Commands (time at the end, load average 1/5/15 min then, wall time so far):", ""]
    for n, command in enumerate(commands, 1):
        e = next(e for _, e in entries if e["command"] == command)
        loads = " / ".join(f"{x:.1f}" for x in e["load_average_1_5_15"])
        wall = f", {e['script_wall_s']} s" if "script_wall_s" in e else ""
        lines.append(f"{n}. `{command}`: {e['time']}, load {loads} on {e['cores']} cores{wall}")
    lines += ["", "Load generators' own CPU:", ""]
    generators: dict[str, list[str]] = {}
    for _, e in entries:
        generators.setdefault(e.get("load_generator", "not recorded"), []).append(e["figure"])
    lines += [f"- {'; '.join(figures)}: {text}" for text, figures in generators.items()]
    return "\n".join(lines) + "\n"


def _measured(e: Entry) -> str:
    """The figure, its ratio to the baseline, every run, and the note."""
    text = _value(e["measured"], e["unit"])
    goal = e.get("goal")
    if goal and goal["on_ratio"]:
        text += f" ({_ratio(e['ratio'], goal)})"
        runs = [_ratio(r["ratio"], goal) for r in e["runs"]]
    else:
        runs = [_number(r["measured"], e["unit"]) for r in e["runs"]]
    text += f"; runs: {' / '.join(runs)}"
    return text + (f"; {e['note']}" if e.get("note") else "")


def _baseline(e: Entry) -> str:
    if e["baseline"] is None:
        return "—"
    return f"{_value(e['baseline'], e['unit'])}, {e['baseline_name']}"


def _value(value: float, unit: str) -> str:
    return f"{_number(value, unit)} {unit}"


def _number(value: float, unit: str) -> str:
    return f"{value:,.1f}" if unit == "ms" else f"{value:,.0f}"


def _ratio(ratio: float, goal: Entry) -> str:
    return f"{ratio:.1f}x" if goal["bound"] >= 2 else f"{ratio:.0%}"


def _met(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"


def write_readme(readme: Path, table: str) -> None:
    """Replace what is between the markers with `table`."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    args = parser.parse_args()
    table = render(json.loads(RESULTS.read_text()))
    print(table, end="")
    write_readme(args.readme, table)


if __name__ == "__main__":
    main()
