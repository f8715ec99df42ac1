"""The soak's report: results.md (a small table a human reads, also shown in the README) and
results.json (everything, for tools), both written from the verdict, never typed by hand."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from soak.verify import Verdict

README_START = "<!-- soak-results:start -->"
README_END = "<!-- soak-results:end -->"
# Examples shown per problem kind in results.md (results.json keeps all the verdict has).
MD_EXAMPLES = 5


def _listing(counts: Mapping[str, int]) -> str:
    """`a 3, b 1`, or `none`."""
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _rows(
    verdict: Verdict, faults: Mapping[str, int], seed: int, events: int, wall_s: float
) -> list[tuple[str, str]]:
    """The table's rows, in the order a reader asks: did it pass, under what, what broke."""
    return [
        ("verdict", "**pass**" if verdict.ok else "**FAIL**"),
        ("faults injected", f"{sum(faults.values())} ({_listing(faults)})"),
        ("events sent", f"{events} ({_listing(verdict.sent)})"),
        ("acked / outputs read", f"{verdict.acked} / {verdict.outputs}"),
        ("lost", str(verdict.lost)),
        ("duplicated", str(verdict.duplicated)),
        ("misrouted", str(verdict.misrouted)),
        ("unexpected outputs", str(verdict.unexpected)),
        ("order violations", str(verdict.order_violations)),
        ("revision errors", str(verdict.revision_errors)),
        (
            "hanging transactions",
            f"{verdict.hanging_partitions} partitions ({verdict.unread_partitions} unread)",
        ),
        ("undecodable records", str(verdict.undecodable)),
        (
            "devices",
            f"{verdict.devices_missing} missing, {verdict.devices_duplicated} duplicated, "
            f"{verdict.device_flag_errors} wrong `device_created`",
        ),
        ("stored events", f"{verdict.store_mismatch} mismatched"),
        ("wall time", f"{wall_s:.0f} s"),
        ("seed", str(seed)),
    ]


def render(
    verdict: Verdict, faults: Mapping[str, int], seed: int, events: int, wall_s: float
) -> str:
    """results.md: the table, then a few examples of each problem found."""
    lines = ["| soak (`make soak`) | |", "|---|---|"]
    lines += [
        f"| {name} | {value} |" for name, value in _rows(verdict, faults, seed, events, wall_s)
    ]
    for kind, examples in sorted(verdict.examples.items()):
        lines += ["", f"{kind} ({getattr(verdict, kind)}):", ""]
        lines += [f"- `{_cell(e)}`" for e in examples[:MD_EXAMPLES]]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """An example as inline code: no backticks or line breaks to break the Markdown."""
    return text.replace("`", "'").replace("\n", " ")


def document(
    verdict: Verdict, faults: Mapping[str, int], seed: int, events: int, wall_s: float
) -> dict[str, Any]:
    """results.json: the run's parameters and the whole verdict."""
    return {
        "seed": seed,
        "events": events,
        "wall_s": round(wall_s, 3),
        "faults": dict(sorted(faults.items())),
        "verdict": verdict.as_dict(),
    }


def write(
    verdict: Verdict,
    faults: Mapping[str, int],
    seed: int,
    events: int,
    wall_s: float,
    out_dir: Path,
) -> tuple[Path, Path]:
    """Write results.md and results.json into `out_dir` (made if missing); their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, data = out_dir / "results.md", out_dir / "results.json"
    markdown.write_text(render(verdict, faults, seed, events, wall_s), encoding="utf-8")
    body = json.dumps(document(verdict, faults, seed, events, wall_s), indent=2)
    data.write_text(body + "\n", encoding="utf-8")
    return markdown, data


def replace_between_markers(text: str, markdown: str) -> str:
    """`text` with what lies between the soak markers replaced by `markdown`. Raises
    ValueError unless each marker appears once, start before end."""
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"expected one {README_START} and one {README_END}")
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    if end < start:
        raise ValueError(f"{README_END} comes before {README_START}")
    return f"{text[:start]}\n{markdown.strip()}\n{text[end:]}"


def update_readme(readme: Path, markdown: str) -> None:
    """Show the last soak's results in the README, between its markers; the file is rewritten
    only when that changes it."""
    text = readme.read_text(encoding="utf-8")
    updated = replace_between_markers(text, markdown)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
