"""The Helm chart (deploy/helm/ingest-worker): it lints and renders, and everything it names
(settings, commands, ports, probe paths) exists in the code, and every setting is wired."""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from ingest_worker import cli
from ingest_worker.core.config import Settings
from ingest_worker.core.metrics import WorkerMetrics
from ingest_worker.shim.app import ROUTES
from ingest_worker.worker.loop import _side_server, transactional_id

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ingest-worker"
# What a release needs at least; the rest comes from values.yaml.
REQUIRED = {
    "config.KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9092,kafka-1.kafka:9092",
    "secret.DATABASE_URL": "postgresql://ingest:pw@db:5432/ingest",
    "secret.INGEST_ADMIN_TOKEN": "igw_not_a_real_token",
}
# Settings whose chart value differs from the code's default, and why.
# The kubelet probes the pod's address, not loopback.
OVERRIDES: dict[str, Any] = {"api_host": "0.0.0.0"}  # noqa: S104
ENV = {f.metadata["env"]: f for f in dataclasses.fields(Settings)}
SECRET_ENV = {env for env, f in ENV.items() if f.metadata["secret"]}
REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# Building helm from source takes minutes on a cold cache.
pytestmark = pytest.mark.timeout(900)

Doc = dict[str, Any]


@pytest.fixture(scope="session")
def helm() -> str:
    """helm, built into .local/bin by the project's own script if it is not there."""
    script = ROOT / "deploy" / "tools" / "helm.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def _values(values: dict[str, object]) -> str:
    """YAML values from dotted keys, over the required ones."""
    tree: dict[str, Any] = {}
    for key, value in {**REQUIRED, **values}.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    text: str = yaml.safe_dump(tree)
    return text


def helm_run(helm: str, verb: str, values: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """`helm VERB` on the chart with these values (read from stdin)."""
    release = ["rel"] if verb == "template" else []
    command = [helm, verb, *release, str(CHART), "--kube-version", "1.30.0", "-f", "-"]
    if verb == "lint":
        command.append("--strict")
    return subprocess.run(command, input=_values(values), capture_output=True, text=True)


def render(helm: str, values: dict[str, object] | None = None) -> list[Doc]:
    """The chart's manifests for these values (dotted keys), hooks included."""
    done = helm_run(helm, "template", values or {})
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: list[Doc], kind: str, component: str | None = "*") -> Doc:
    """The one manifest of `kind` (of `component`; None: the release's own, "*": any)."""
    found = [d for d in docs if d["kind"] == kind and component in ("*", _component(d))]
    assert len(found) == 1, f"{kind} {component}: {len(found)} found"
    return found[0]


def _component(doc: Doc) -> str | None:
    labels: dict[str, str] = doc["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, container) for every container of every workload."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield doc, container


def env_names(docs: list[Doc]) -> set[str]:
    """Every environment variable the chart sets: ConfigMap and Secret keys, container env."""
    names: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData", {})) | set(doc.get("data", {}))
    for _, container in containers(docs):
        names |= {e["name"] for e in container.get("env", [])}
    return names


def config(docs: list[Doc]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap")["data"]
    return data


@pytest.fixture(scope="module")
def docs(helm: str) -> list[Doc]:
    return render(helm)


def test_chart_lints(helm: str) -> None:
    """`helm lint --strict` passes with the required values."""
    done = helm_run(helm, "lint", {})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config.KAFKA_BOOTSTRAP_SERVERS": ""}, "config.KAFKA_BOOTSTRAP_SERVERS is required"),
        ({"secret.DATABASE_URL": ""}, "secret.DATABASE_URL (or secret.existingSecret)"),
        ({"config.INGEST_WORKER_HTTP_PORT": "0"}, "INGEST_WORKER_HTTP_PORT must not be 0"),
        ({"config.INGEST_KAFKA_TIMEOUT_S": "30"}, "must exceed 280 s"),
        ({"worker.kind": "DaemonSet"}, "worker.kind must be Deployment or StatefulSet"),
    ],
)
def test_render_refuses_what_cannot_run(helm: str, values: dict[str, object], message: str) -> None:
    """Values the processes cannot start or stop cleanly with fail the render, saying why."""
    done = helm_run(helm, "template", values)
    assert done.returncode != 0
    assert message in done.stderr


def test_every_setting_is_wired(docs: list[Doc]) -> None:
    """Each Settings field reaches the processes: secrets through the Secret, the rest
    through the ConfigMap, the per-pod transactional id through the worker's env."""
    assert set(ENV) <= env_names(docs)
    secret = one(docs, "Secret", None)["stringData"]
    assert set(secret) == SECRET_ENV
    assert not SECRET_ENV & set(config(docs))
    worker = next(c for w, c in containers(docs) if _component(w) == "worker")
    assert "INGEST_TRANSACTIONAL_ID" in {e["name"] for e in worker["env"]}


def test_chart_names_only_real_settings(docs: list[Doc]) -> None:
    """Every variable the chart sets is a setting, or a helper that a setting's value uses
    (`$(NAME)`); a renamed or removed setting fails here."""
    names = env_names(docs)
    used = {
        ref
        for _, container in containers(docs)
        for e in container.get("env", [])
        if e["name"] in ENV
        for ref in REFERENCE.findall(e.get("value", ""))
    }
    assert names - set(ENV) <= used, f"not settings: {sorted(names - set(ENV) - used)}"
    assert used <= names


def test_config_keeps_the_code_defaults(docs: list[Doc]) -> None:
    """The ConfigMap parses as Settings (each value valid) and holds the code's defaults,
    apart from the overrides the chart needs."""
    parsed = Settings.from_env(config(docs))
    defaults = Settings(kafka_bootstrap_servers=REQUIRED["config.KAFKA_BOOTSTRAP_SERVERS"])
    assert parsed == dataclasses.replace(defaults, **OVERRIDES)


def test_commands_are_cli_subcommands(docs: list[Doc]) -> None:
    """Each container runs `ingest-worker <subcommand>`: the project's console script and a
    subcommand its parser knows; api, worker and migrate each run somewhere."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ingest-worker"] == "ingest_worker.cli:main"
    commands = set()
    for _, container in containers(docs):
        program, subcommand = container["command"]
        assert program == "ingest-worker"
        with pytest.raises(SystemExit) as exit_info:
            cli.main([subcommand, "--help"])
        assert exit_info.value.code == 0, subcommand
        commands.add(subcommand)
    assert commands == {"api", "worker", "migrate"}
    with pytest.raises(SystemExit) as unknown:
        cli.main(["serve", "--help"])
    assert unknown.value.code == 2


def _probes(container: Doc) -> dict[str, Doc]:
    kinds = ("startupProbe", "livenessProbe", "readinessProbe")
    return {kind: container[kind]["httpGet"] for kind in kinds}


def test_ports_follow_the_settings(docs: list[Doc]) -> None:
    """The API listens on INGEST_API_PORT, the worker's side port on INGEST_WORKER_HTTP_PORT;
    probes and Services point at those ports."""
    settings = Settings.from_env(config(docs))
    expected = {"api": settings.api_port, "worker": settings.worker_http_port}
    for workload, container in containers(docs):
        port = expected.get(_component(workload) or "")
        if port is None:  # the migration listens on nothing
            assert "ports" not in container
            continue
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert {p["port"] for p in _probes(container).values()} == {"http"}
    assert one(docs, "Service", "api")["spec"]["ports"][0]["targetPort"] == "http"
    assert one(docs, "Service", "worker")["spec"]["ports"][0]["port"] == settings.worker_http_port


def test_api_probe_paths_are_api_routes(docs: list[Doc]) -> None:
    """The API's probes ask for routes the API serves: liveness /healthz (never /readyz, so
    a dependency outage restarts nothing), readiness /readyz."""
    api = next(c for w, c in containers(docs) if _component(w) == "api")
    paths = {route.path for route in ROUTES if "GET" in (getattr(route, "methods", None) or ())}
    probes = _probes(api)
    assert {p["path"] for p in probes.values()} <= paths
    assert (probes["livenessProbe"]["path"], probes["readinessProbe"]["path"]) == (
        "/healthz",
        "/readyz",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_worker_probe_paths_answer_on_its_side_port(docs: list[Doc]) -> None:
    """The worker's probes ask for paths its side server answers 200 (a healthy worker)."""
    worker = next(c for w, c in containers(docs) if _component(w) == "worker")
    probes = _probes(worker)
    assert (probes["livenessProbe"]["path"], probes["readinessProbe"]["path"]) == (
        "/healthz",
        "/readyz",
    )
    side = Settings(worker_http_port=_free_port())
    async with _side_server(side, WorkerMetrics()), httpx.AsyncClient() as client:
        for probe in probes.values():
            url = f"http://127.0.0.1:{side.worker_http_port}{probe['path']}"
            assert (await client.get(url)).status_code == 200, probe["path"]
        missing = await client.get(f"http://127.0.0.1:{side.worker_http_port}/nope")
        assert missing.status_code == 404


def test_worker_grace_period_outlasts_a_clean_stop(docs: list[Doc]) -> None:
    """terminationGracePeriodSeconds exceeds two commits at their bound (3t + 5 each,
    worker/loop.py), leaving the group (t) and closing the producer (2t)."""
    t = Settings.from_env(config(docs)).kafka_timeout_s
    grace = one(docs, "Deployment", "worker")["spec"]["template"]["spec"]
    assert grace["terminationGracePeriodSeconds"] > 2 * (3 * t + 5) + 3 * t


@pytest.mark.parametrize("kind", ["Deployment", "StatefulSet"])
def test_keda_scales_the_worker_on_its_group_lag(helm: str, kind: str) -> None:
    """The ScaledObject watches the worker's consumer group on the raw topic, scales the
    worker workload, and stops at the raw topic's partition count."""
    docs = render(helm, {"worker.kind": kind, "rawTopicPartitions": 12})
    settings = Settings.from_env(config(docs))
    scaled = one(docs, "ScaledObject")["spec"]
    workload = one(docs, kind, "worker")
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": workload["metadata"]["name"],
    }
    assert scaled["maxReplicaCount"] == 12
    assert "replicas" not in workload["spec"]  # KEDA owns it
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert {k: trigger["metadata"][k] for k in ("bootstrapServers", "consumerGroup", "topic")} == {
        "bootstrapServers": settings.kafka_bootstrap_servers,
        "consumerGroup": settings.group_id,
        "topic": settings.raw_topic,
    }
    assert int(trigger["metadata"]["lagThreshold"]) > 0


def test_without_keda_the_worker_has_fixed_replicas(helm: str) -> None:
    """keda.enabled=false: no ScaledObject, and the workload carries its replica count."""
    docs = render(helm, {"worker.keda.enabled": False, "worker.replicas": 3})
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert one(docs, "Deployment", "worker")["spec"]["replicas"] == 3


def test_transactional_id_is_unique_per_pod_and_stable(docs: list[Doc]) -> None:
    """The worker's transactional id is the prefix, the group and the pod name: the same for
    a restarted container, different for every other pod."""
    worker = next(c for w, c in containers(docs) if _component(w) == "worker")
    env = {e["name"]: e for e in worker["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    def txn_id(pod: str) -> str:
        value = REFERENCE.sub(
            lambda m: pod if m[1] == "POD_NAME" else "?", env["INGEST_TRANSACTIONAL_ID"]["value"]
        )
        settings = Settings.from_env({**config(docs), "INGEST_TRANSACTIONAL_ID": value})
        return transactional_id(settings, "any-host", 1)

    assert txn_id("rel-worker-abc") == "ingest-worker-ingest-worker-rel-worker-abc"
    assert txn_id("rel-worker-abc") != txn_id("rel-worker-xyz")


def test_statefulset_worker_keeps_pod_names(helm: str) -> None:
    """worker.kind=StatefulSet: pods named by ordinal (kept when a pod is replaced), started
    in parallel, under the headless worker Service."""
    docs = render(helm, {"worker.kind": "StatefulSet"})
    spec = one(docs, "StatefulSet", "worker")["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == one(docs, "Service", "worker")["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "Deployment" and _component(d) == "worker"]


def _hook(doc: Doc) -> tuple[str, int]:
    annotations = doc["metadata"]["annotations"]
    return annotations["helm.sh/hook"], int(annotations["helm.sh/hook-weight"])


def test_migration_runs_as_a_hook_with_its_own_secret(docs: list[Doc]) -> None:
    """`ingest-worker migrate` runs before install and upgrade, with every setting inline and
    DATABASE_URL from a hook Secret made before it (the release's own do not exist yet)."""
    job = one(docs, "Job", "migrate")
    assert _hook(job) == ("pre-install,pre-upgrade", 0)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (source,) = container["envFrom"]
    secret = next(d for d in docs if d["metadata"]["name"] == source["secretRef"]["name"])
    assert secret["kind"] == "Secret"
    assert _hook(secret) == ("pre-install,pre-upgrade", -10)
    assert set(secret["stringData"]) == {"DATABASE_URL"}
    inline = {e["name"]: e["value"] for e in container["env"]}
    assert inline == config(docs)
    lock_s = Settings.from_env(inline).migrate_lock_timeout_s
    assert job["spec"]["activeDeadlineSeconds"] > lock_s


def test_existing_secret_replaces_the_charts(helm: str) -> None:
    """secret.existingSecret: the chart makes no Secret and every container reads that one."""
    docs = render(helm, {"secret.existingSecret": "ingest-secrets", "secret.DATABASE_URL": ""})
    assert not [d for d in docs if d["kind"] == "Secret"]
    for _, container in containers(docs):
        refs = {s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s}
        assert refs == {"ingest-secrets"}


def test_budgets_and_autoscaler_select_the_workloads(docs: list[Doc]) -> None:
    """Each PodDisruptionBudget selects its workload's pods; the HPA scales the API."""
    for component in ("api", "worker"):
        pods = one(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
        budget = one(docs, "PodDisruptionBudget", component)["spec"]
        assert budget["selector"]["matchLabels"].items() <= pods.items()
        assert budget["maxUnavailable"] == 1
    hpa = one(docs, "HorizontalPodAutoscaler", "api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == one(docs, "Deployment", "api")["metadata"]["name"]


def test_secrets_stay_out_of_the_configmap(docs: list[Doc]) -> None:
    """No secret value appears in the ConfigMap or in any container's inline env."""
    secrets = {REQUIRED["secret.DATABASE_URL"], REQUIRED["secret.INGEST_ADMIN_TOKEN"]}
    assert not secrets & set(config(docs).values())
    for _, container in containers(docs):
        assert not secrets & {e.get("value") for e in container.get("env", [])}
