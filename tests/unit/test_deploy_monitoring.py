"""The alert rules and the dashboard (deploy/monitoring): valid for promtool, firing as meant
(promtool's rule tests), and naming only metrics and labels the code's registries export."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ingest_worker.core import supervise
from ingest_worker.core.metrics import ApiMetrics, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
# What the exposition adds to a family's name, per type (prometheus_client).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = {"instance", "job"}
GRAFANA_RANGES = ("$__rate_interval", "$__interval", "$__range")

pytestmark = pytest.mark.timeout(300)

Exported = dict[str, frozenset[str]]


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool, put into .local/bin by the project's own script if it is not there."""
    script = ROOT / "deploy" / "tools" / "promtool.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def _families(metrics: object) -> Iterator[tuple[str, str, frozenset[str]]]:
    """(type, family name, label names) of each metric of an ApiMetrics or WorkerMetrics;
    the label names are read off the metric objects, which show none until a child exists."""
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._type:
            for family in value.describe():
                yield family.type, family.name, frozenset(value._labelnames)


@pytest.fixture
async def exported() -> AsyncIterator[Exported]:
    """Every series name the two processes' registries export, with its label names (a
    supervised task runs so that the supervisor's families show their labels)."""
    found: Exported = {}
    for metrics in (ApiMetrics(), WorkerMetrics()):
        for kind, name, labels in _families(metrics):
            for suffix in SUFFIXES[kind]:
                found[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    registry = WorkerMetrics().registry
    task = supervise.board(registry).start("probe", _idle)
    try:
        for family in registry.collect():
            for sample in family.samples:
                if family.name.startswith("ingest_background_task"):
                    found[sample.name] = frozenset(sample.labels)
        yield found
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _idle(beat: supervise.Beat) -> None:
    beat()
    await asyncio.Event().wait()


# -- PromQL, as far as names go --

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}
KEYWORDS |= {"ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions,
    keywords, label names, durations or numbers."""
    bare = _STRING.sub('""', expr)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\{[^}]*\}", " ", bare)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    return {m[1] for m in _IDENT.finditer(bare) if not m[2] and m[1].lower() not in KEYWORDS}


def label_uses(expr: str) -> Iterator[tuple[str | None, str]]:
    """(metric, label) for each label matcher, and (None, label) for each grouping label."""
    bare = _STRING.sub('""', expr)
    for selector in _SELECTOR.finditer(bare):
        for matcher in _MATCHER.finditer(selector[2]):
            yield selector[1], matcher[1]
    for grouping in _GROUPING.finditer(bare):
        for label in filter(None, (part.strip() for part in grouping[1].split(","))):
            yield None, label


def test_the_registries_show_names_and_labels(exported: Exported) -> None:
    """The registries the checks read give every family, with its suffixes and labels."""
    assert exported["ingest_worker_records_total"] == {"outcome", "code"}
    assert exported["ingest_publish_seconds_bucket"] == {"le"}
    assert exported["ingest_worker_commit_seconds_count"] == frozenset()
    assert exported["ingest_background_task_crashes_total"] == {"task"}
    assert "ingest_worker_records" not in exported


def test_the_name_parser_finds_names_and_nothing_else() -> None:
    """The parser the checks below rely on: metric names only, labels apart."""
    expr = (
        'sum by (code) (rate(a_total{outcome="rejected", code=~"x|y"}[5m])) '
        "/ on () group_left histogram_quantile(0.99, sum by (le) (rate(b_bucket[1h]))) > 1e3"
        " unless absent(c)"
    )
    assert metric_names(expr) == {"a_total", "b_bucket", "c"}
    assert set(label_uses(expr)) == {
        ("a_total", "outcome"),
        ("a_total", "code"),
        (None, "code"),
        (None, "le"),
    }


def check_names(expr: str, exported: Exported) -> None:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    unknown = names - set(exported)
    assert not unknown, f"{expr!r} names metrics the code does not export: {sorted(unknown)}"
    for metric, label in label_uses(expr):
        allowed = exported[metric] if metric else frozenset().union(*(exported[n] for n in names))
        assert label in allowed | TARGET_LABELS, f"{expr!r}: no label {label!r} on {metric}"


# -- the alert rules --


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_pass_promtool(promtool: str) -> None:
    """`promtool check rules` accepts the file: YAML shape, PromQL, templates."""
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_alerts_fire_as_meant(promtool: str) -> None:
    """promtool's rule tests (alerts_test.yaml): each alert fires on the series it is about
    and stays quiet on an idle or healthy system."""
    done = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_are_complete() -> None:
    """Every rule is an alert with a unique name, a severity, a summary and a description;
    lag, rejections, 503s, commits and dependencies are each covered."""
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    for rule in found:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    covered = " ".join(rule["expr"] for rule in found)
    for metric in (
        "ingest_worker_consumer_lag",
        'ingest_worker_records_total{outcome="rejected"',
        'ingest_http_requests_total{status="503"}',
        "ingest_worker_commit_seconds_count",
        "ingest_worker_dependencies_up",
        "ingest_background_task_up",
    ):
        assert metric in covered


def test_alert_rules_name_exported_metrics(exported: Exported) -> None:
    """Each alert's expression selects only metrics, and labels, that the code exports."""
    for rule in rules():
        check_names(rule["expr"], exported)


def test_a_misspelt_metric_is_caught(exported: Exported) -> None:
    """The check above fails on a name the code does not export, or a label it lacks."""
    with pytest.raises(AssertionError, match="does not export"):
        check_names("rate(ingest_worker_record_total[5m])", exported)
    with pytest.raises(AssertionError, match="no label"):
        check_names('ingest_worker_consumer_lag{topic="raw"}', exported)


# -- the dashboard --


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs
    return exprs


def _concrete(expr: str) -> str:
    for variable in GRAFANA_RANGES:
        expr = expr.replace(variable, "5m")
    assert "$" not in expr, f"unknown dashboard variable in {expr!r}"
    return expr


def test_dashboard_queries_name_exported_metrics(exported: Exported) -> None:
    """Each panel's query selects only metrics, and labels, that the code exports."""
    for expr in dashboard_exprs():
        check_names(_concrete(expr), exported)


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Each panel's query is valid PromQL: promtool checks them as recording rules."""
    recorded = [
        {"record": f"dashboard:query_{n}", "expr": _concrete(expr)}
        for n, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_importable() -> None:
    """The dashboard has a title, a uid, a Prometheus data source variable every query uses,
    and panels that do not overlap."""
    board = json.loads(DASHBOARD.read_text())
    assert board["title"]
    assert board["uid"]
    (variable,) = board["templating"]["list"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${" + variable["name"] + "}"
