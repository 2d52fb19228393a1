"""The Kubernetes manifests and the container image, checked offline (no cluster).

Every overlay is rendered with `kubectl kustomize`, validated against the Kubernetes JSON schemas
(`kubernetes-validate`, strict, oldest and newest supported versions), linted with checkov; the
custom resources (KEDA, Prometheus Operator), which have no schema here, are checked against what
they point at. The cpu-demo overlay's command lines then run for real: nats-server with the
rendered config and the shipped permissions, a node and the gateway with their Deployments'
commands, answering the probes the manifests declare.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from disrouter.gateway.metrics import GatewayMetrics
from disrouter.local.nats_server import NatsServer, free_port
from disrouter.mesh.connection import NatsAuth, connect
from disrouter.mesh.membership import open_registry
from disrouter.mesh.subjects import Subjects
from disrouter.mesh.topology import load_topology
from disrouter.node.metrics import NodeMetrics
from disrouter.topologies import topology_path

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
BIN = Path(sys.executable).parent
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())  # oldest and newest with schemas here
# Custom resources without a schema in kubernetes-validate: checked by test_custom_resources_point_at_real_things.
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "ServiceMonitor"}
LINT_VENV = ROOT / ".venv-k8s-lint"  # made by k8s/lint-tools.sh (checkov conflicts with the dev pins)


def _tool(name: str) -> str:
    for candidate in (BIN / name, LINT_VENV / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    if found := shutil.which(name):
        return found
    message = f"{name} is not installed: run `bash k8s/lint-tools.sh` (a venv with the k8s-lint extra)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay's manifests as `kubectl kustomize` renders them."""
    done = subprocess.run([_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec["containers"] + spec.get("initContainers", [])


def tier_deployments(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {n: d for n, d in of_kind(docs, "Deployment").items() if d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "node"}


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def exposed_metrics(registry: Any) -> set[str]:
    """Series names a prometheus_client registry exports, whether or not a labelled child exists yet."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


METRICS = exposed_metrics(NodeMetrics("n", "m").registry) | exposed_metrics(GatewayMetrics().registry)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(disrouter_[a-z_]+)\b", expr))


# --- rendering and schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = render(overlay)
    assert {doc["kind"] for doc in docs} >= {"StatefulSet", "Deployment", "PodDisruptionBudget", "ConfigMap", "Service", "NetworkPolicy"}
    for version in KUBERNETES_VERSIONS:
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} at {list(exc.path)}: {exc.message}") from None


def test_schema_validation_rejects_a_broken_manifest() -> None:
    """The validator used above does fail: a misspelt field and a wrong type."""
    deployment = json.loads(json.dumps(next(iter(tier_deployments(render(OVERLAYS[0])).values()))))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0].pop("readinessprobe")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_overlay_and_component_is_rendered() -> None:
    """Both overlays exist, and between them they use every component (so every file is checked)."""
    assert OVERLAYS == ["cpu-demo", "gpu-qwen2.5"]
    kinds = {doc["kind"] for overlay in OVERLAYS for doc in render(overlay)}
    assert {"ScaledObject", "HorizontalPodAutoscaler", "PodMonitor", "ServiceMonitor", "Ingress"} <= kinds


# --- lint --------------------------------------------------------------------------------------


def _checkov(tmp_path: Path, framework: str, file: Path) -> dict[str, Any]:
    done = subprocess.run(
        [_tool("checkov"), "-f", str(file), "--framework", framework, "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(done.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing_that_is_not_fixed_or_justified(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(render(overlay)))
    report = _checkov(tmp_path, "kubernetes", rendered)
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert report["summary"]["passed"] > 100 and report["summary"]["parsing_errors"] == 0
    for skipped in report["results"]["skipped_checks"]:  # each skip annotation says why
        assert len(skipped["check_result"].get("suppress_comment") or "") > 20, skipped["check_id"]


def test_dockerfile_lints_clean(tmp_path: Path) -> None:
    report = _checkov(tmp_path, "dockerfile", ROOT / "Dockerfile")
    assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    done = subprocess.run([_tool("hadolint"), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_holds_every_package() -> None:
    """`COPY . .` with .dockerignore: nothing pyproject installs may be ignored."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY . ." in dockerfile and "USER 10001" in dockerfile and 'VOLUME ["/cache"]' in dockerfile
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    tops = {d.split("/")[0] for d in package_dirs} | {"pyproject.toml", "README.md"}
    assert not tops & ignored
    assert all((ROOT / top).exists() for top in tops)


def test_image_build_context_makes_a_complete_wheel(tmp_path: Path) -> None:
    """What `pip install .` does in the image, on the tracked files .dockerignore lets through:
    the wheel holds every package and both commands."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    context = tmp_path / "context"
    for name in tracked:
        parts = Path(name).parts
        if any(fnmatch(parts[0], pattern) or fnmatch(name, pattern) or fnmatch(part, pattern.removeprefix("**/")) for pattern in patterns for part in parts):
            continue
        if (ROOT / name).is_file():
            (context / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, context / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("disrouter-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    for package in packages:
        assert package.replace(".", "/") + "/__init__.py" in names, package
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "disrouter = disrouter.cli.main:main" in entry_points and "disrouter-node = disrouter.node.cli:main" in entry_points
    assert "disrouter/topologies/demo.yaml" in names and "disrouter/topologies/smollm2.yaml" in names
    for tier in ("s", "m"):  # the checkpoints topologies/demo.yaml serves (family-<tier>-sftrl)
        assert f"disrouter/training/family/self-aware/{tier}/sftrl/model.safetensors" in names


# --- what the manifests point at ---------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topology_configmap_parses_with_one_deployment_per_tier(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    (configmap,) = [d for n, d in of_kind(docs, "ConfigMap").items() if n.startswith("disrouter-topology")]
    (tmp_path / "topology.yaml").write_text(configmap["data"]["topology.yaml"])
    topology = load_topology(tmp_path / "topology.yaml")
    tiers = {}
    for name, deployment in tier_deployments(docs).items():
        node = deployment["spec"]["template"]["spec"]["containers"][0]
        tier = env_of(node)["DISROUTER_TIER"]
        assert deployment["spec"]["template"]["metadata"]["labels"]["disrouter.io/tier"] == tier
        assert name == f"disrouter-node-{tier}"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["topology"]["configMap"]["name"] == configmap["metadata"]["name"]
        assert {"dshm", "model-cache"} <= set(volumes)
        tiers[tier] = deployment
    assert sorted(tiers) == sorted(entry.key for entry in topology.models)
    assert topology.prefix == "disrouter"  # the prefix k8s/nats/disrouter-auth.conf grants


def test_cpu_demo_topology_is_the_packaged_smollm2_demo(tmp_path: Path) -> None:
    ours = load_topology(K8S / "overlays" / "cpu-demo" / "topology.yaml")
    assert ours == load_topology(topology_path("smollm2"))


def test_gpu_tiers_ask_for_one_gpu_and_vllm_and_drain_within_their_grace_period() -> None:
    for name, deployment in tier_deployments(render("gpu-qwen2.5")).items():
        spec = deployment["spec"]["template"]["spec"]
        node = spec["containers"][0]
        assert node["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert "--backend=vllm" in node["args"], name
        drain = float(env_of(node)["DRAIN_TIMEOUT_S"])
        assert drain >= 120 and spec["terminationGracePeriodSeconds"] > drain, name  # the default query deadline is 120 s
    nats = of_kind(render("gpu-qwen2.5"), "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_point_at_real_things(overlay: str) -> None:
    docs = render(overlay)
    deployments = of_kind(docs, "Deployment")
    for kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        for name, scaler in of_kind(docs, kind).items():
            target = deployments[scaler["spec"]["scaleTargetRef"]["name"]]
            tier = env_of(target["spec"]["template"]["spec"]["containers"][0])["DISROUTER_TIER"]
            if kind == "ScaledObject":
                (trigger,) = scaler["spec"]["triggers"]
                query = trigger["metadata"]["query"]
                assert trigger["type"] == "prometheus" and f'model="{tier}"' in query, query
                assert metric_names(query) and metric_names(query) <= METRICS, query
                assert scaler["spec"]["minReplicaCount"] >= 1
            else:
                pod_metrics = {m["pods"]["metric"]["name"] for m in scaler["spec"]["metrics"] if m["type"] == "Pods"}
                assert pod_metrics and pod_metrics <= METRICS
    for name, monitor in of_kind(docs, "PodMonitor").items():
        selected = [d for d in deployments.values() if monitor["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert {d["metadata"]["name"] for d in selected} == set(tier_deployments(docs))
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for deployment in selected:
                assert endpoint["port"] in {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
            assert endpoint["path"] == "/metrics"
    services = of_kind(docs, "Service")
    for name, monitor in of_kind(docs, "ServiceMonitor").items():
        selected = [s for s in services.values() if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
        assert [s["metadata"]["name"] for s in selected] == ["disrouter-gateway"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in selected[0]["spec"]["ports"]}


def test_dashboard_queries_use_metrics_that_exist() -> None:
    dashboard = json.loads((K8S / "base" / "grafana-dashboard.json").read_text())
    used = set().union(*(metric_names(t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]))
    assert used and used <= METRICS, used - METRICS
    assert {"disrouter_in_flight", "disrouter_queries_total", "disrouter_gateway_requests_total"} <= used


# --- the command lines, run for real -----------------------------------------------------------


def nats_config(overlay: str, folder: Path, ports: dict[str, int], pid_file: Path) -> Path:
    """The overlay's rendered NATS ConfigMap written to ``folder`` with its ports, routes and
    paths moved to this machine (``ports``: client, monitor, and cluster-<i> for each route)."""
    data = next(d for n, d in of_kind(render(overlay), "ConfigMap").items() if n.startswith("nats-config"))["data"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in data.items():
        text = text.replace("port: 4222", f"port: {ports['client']}").replace("http_port: 8222", f"http_port: {ports['monitor']}")
        text = text.replace("/var/run/nats/nats.pid", str(pid_file)).replace("store_dir: /data", "# store_dir: -sd")
        for i in range(3):
            text = text.replace(f"nats://nats-{i}.nats-headless:6222", f"nats://127.0.0.1:{ports.get(f'cluster-{i}', 0)}")
        if "cluster-self" in ports:
            text = text.replace("port: 6222", f"port: {ports['cluster-self']}")
        (folder / name).write_text(text)
    return folder / "nats.conf"


def test_gpu_overlay_nats_forms_a_three_server_jetstream_cluster(tmp_path: Path) -> None:
    """The gpu-qwen2.5 NATS config as three servers (routes moved to local ports): each answers
    its three probes, and JetStream keeps a three-replica registry bucket."""
    docs = render("gpu-qwen2.5")
    statefulset = of_kind(docs, "StatefulSet")["nats"]
    assert statefulset["spec"]["replicas"] == 3
    probes = [path for _, path in probe_paths(statefulset["spec"]["template"]["spec"]["containers"][0])]
    cluster_ports = {f"cluster-{i}": free_port() for i in range(3)}
    servers = []
    passwords = {f"DISROUTER_{u.upper()}_PASSWORD": f"pw{u}" for u in ("client", "node", "gateway", "admin")}
    try:
        for i in range(3):
            ports = {"client": free_port(), "monitor": free_port(), "cluster-self": cluster_ports[f"cluster-{i}"], **cluster_ports}
            config = nats_config("gpu-qwen2.5", tmp_path / f"nats-{i}", ports, tmp_path / f"nats-{i}.pid")
            server = NatsServer(port=ports["client"], config=config, env=passwords | {"SERVER_NAME": f"nats-{i}"}, store_dir=tmp_path / f"js-{i}")
            servers.append((server.start(timeout=30), ports["monitor"]))
        for _, monitor in servers:
            asyncio.run(_all_ok(f"http://127.0.0.1:{monitor}", probes))
        jsz = httpx.get(f"http://127.0.0.1:{servers[0][1]}/jsz").json()
        assert jsz["meta_cluster"]["cluster_size"] == 3, jsz.get("meta_cluster")
        assert asyncio.run(_registry_replicas(servers[0][0].url, passwords["DISROUTER_ADMIN_PASSWORD"])) == 3
    finally:
        for server, _ in servers:
            server.stop()


async def _registry_replicas(url: str, admin_password: str) -> int:
    """Replicas of the registry bucket a node would create on this server (as admin)."""
    nc = await connect(url, auth=NatsAuth(user="admin", password=admin_password))
    try:
        await open_registry(nc, Subjects("disrouter"))
        return (await nc.jetstream().stream_info(f"KV_{Subjects('disrouter').registry_bucket}")).config.num_replicas
    finally:
        await nc.close()


# --- the cpu-demo command lines, run for real --------------------------------------------------


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in a container's command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def command_line(container: dict[str, Any], env: dict[str, str], remap: dict[str, str]) -> list[str]:
    """The container's command and args as the kubelet runs them, with its paths and ports remapped."""
    argv = [_expand(part, env) for part in container["command"] + container.get("args", [])]
    for old, new in remap.items():
        argv = [part.replace(old, new) for part in argv]
    return [str(BIN / argv[0]), *argv[1:]]


def probe_paths(container: dict[str, Any]) -> list[tuple[str, str]]:
    """(port name, path) of each probe the container declares."""
    return [(p["httpGet"]["port"], p["httpGet"]["path"]) for kind in ("startupProbe", "readinessProbe", "livenessProbe") if (p := container.get(kind))]


async def _all_ok(base: str, paths: list[str], timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(int(timeout / 0.2)):
            try:
                codes = [(await http.get(base + path)).status_code for path in paths]
            except httpx.TransportError:
                codes = []
            if codes and all(code == 200 for code in codes):
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{base}: {paths} did not all answer 200 (last: {codes})")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)


async def test_cpu_demo_command_lines_run_and_answer_their_probes(tmp_path: Path) -> None:
    """nats-server with the rendered config, then a node (instant backend) and the gateway started
    with their Deployments' command lines, logged in with the credentials files they mount; every
    probe the manifests declare answers 200, and a question goes through the gateway."""
    docs = render("cpu-demo")
    nats_port, monitor_port = free_port(), free_port()
    config = nats_config("cpu-demo", tmp_path / "nats", {"client": nats_port, "monitor": monitor_port}, tmp_path / "nats.pid")
    passwords = {user: f"pw{user}{os.getpid()}" for user in ("client", "node", "gateway", "admin")}
    env = {f"DISROUTER_{u.upper()}_PASSWORD": p for u, p in passwords.items()} | {"SERVER_NAME": "nats-0"}
    nats = of_kind(docs, "StatefulSet")["nats"]["spec"]["template"]["spec"]["containers"][0]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for user in ("node", "gateway"):
        (secrets / f"{user}-password").write_text(passwords[user])
    (secrets / "keys").write_text("# client keys\nsk-k8s-test\n")
    (tmp_path / "topology.yaml").write_text(next(d for n, d in of_kind(docs, "ConfigMap").items() if n.startswith("disrouter-topology"))["data"]["topology.yaml"])
    with NatsServer(port=nats_port, config=config, env=env, store_dir=tmp_path / "js") as server:
        await _all_ok(f"http://127.0.0.1:{monitor_port}", [path for _, path in probe_paths(nats)])
        deployments = of_kind(docs, "Deployment")
        node_spec = deployments["disrouter-node-smollm2-small"]["spec"]["template"]["spec"]["containers"][0]
        gateway_spec = deployments["disrouter-gateway"]["spec"]["template"]["spec"]["containers"][0]
        node_http, gateway_http = free_port(), free_port()
        remap = {
            "/etc/disrouter/topology/topology.yaml": str(tmp_path / "topology.yaml"),
            "/etc/disrouter/nats/": f"{secrets}/",
            "/etc/disrouter/api-keys/keys": str(secrets / "keys"),
            "--http-port=8080": f"--http-port={node_http}",
            "--port=8000": f"--port={gateway_http}",
            "--host=0.0.0.0": "--host=127.0.0.1",
        }
        run_env = {k: v for k, v in os.environ.items() if not k.startswith("DISROUTER_")} | {"DISROUTER_NATS": server.url}
        node_env = env_of(node_spec) | {"POD_NAME": "disrouter-node-smollm2-small-0"}
        node_cmd = [*command_line(node_spec, node_env, remap), "--backend=instant", "--http-host=127.0.0.1"]
        node = await asyncio.create_subprocess_exec(*node_cmd, env=run_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        gateway = await asyncio.create_subprocess_exec(
            *command_line(gateway_spec, env_of(gateway_spec), remap), env=run_env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            await _all_ok(f"http://127.0.0.1:{node_http}", [path for _, path in probe_paths(node_spec)] + ["/metrics"])
            await _all_ok(f"http://127.0.0.1:{gateway_http}", [path for _, path in probe_paths(gateway_spec)])
            assert {port for port, _ in probe_paths(node_spec)} == {p["name"] for p in node_spec["ports"]}
            async with httpx.AsyncClient(timeout=30) as http:
                reply = await http.post(
                    f"http://127.0.0.1:{gateway_http}/v1/chat/completions",
                    json={"model": "disrouter", "messages": [{"role": "user", "content": "hi"}]},
                    headers={"Authorization": "Bearer sk-k8s-test"},
                )
            assert reply.status_code == 200, reply.text
            assert reply.json()["disrouter"]["node_id"] == "disrouter-node-smollm2-small-0"
        finally:
            await _stop(gateway)
            await _stop(node)
        assert node.returncode == 0 and gateway.returncode == 0
