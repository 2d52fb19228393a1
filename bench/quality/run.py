"""`disrouter bench quality`: labels, offline routers, then the live mesh per arm and policy; writes the results folder."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from disrouter.local.nats_server import NatsServer
from disrouter.training.tasks import Task

from . import baselines, cascade, centralized, confidence, readme, report, uncertainty
from .embed import Embedder
from .family import ensure_family
from .headline import headline
from .join import runtime_join
from .labels import Labels, tier_labels
from .live import LiveMesh, outcome, write_topology
from .metrics import Outcome, summarise
from .preset import ARMS, EVAL_SPLITS, Preset, Tier, load_preset
from .queries import load_splits, question_text, write_queries

POLICIES = ("generate", "probe")
LIVE_METHODS = tuple((arm, policy) for arm in ARMS for policy in POLICIES + ((confidence.POLICY,) if arm == "untrained" else ()))
"""(arm, policy) of every self-routing method; ``confidence`` needs no training, so only the untrained arm has it."""
Method = Callable[[str, str, list[Tier], float], list[Outcome]]
"""(split, pool name, pool tiers, alpha) -> one outcome per query of the split."""


def progress_bar(console: Console) -> Progress:
    """A bar per job (labels of a tier, one live run), cleared when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=True)


def row(split: str, pool: str, alpha: float, method: str, outcomes: Sequence[Outcome] | None, tiers: Sequence[str], status: str = "ok") -> dict[str, Any]:
    """One results row; ``outcomes`` None gives a row with the status and no figures. The row carries its
    outcomes until ``uncertainty.annotate`` turns them into ``utility_ci95``."""
    figures = summarise(outcomes, alpha, tiers) if outcomes is not None else {}
    return {"split": split, "pool": pool, "alpha": alpha, "method": method, "status": status, **figures, "outcomes": outcomes}


def all_labels(preset: Preset, splits: dict[str, list[Task]], out: Path, console: Console) -> Labels:
    """Every tier's base model on every query (cached in ``out/labels``)."""
    tasks = [task for split in splits.values() for task in split]
    with progress_bar(console) as progress:
        return {
            tier.key: tier_labels(tier.key, tier.model, tasks, out / "labels", max_tokens=preset.max_tokens, in_flight=preset.in_flight, progress=progress)
            for tier in preset.tiers
        }


def offline_methods(preset: Preset, splits: dict[str, list[Task]], labels: Labels, console: Console) -> tuple[dict[str, Method], dict[str, Any]]:
    """Oracle, trivial and centralized routers, trained on the train split (thresholds on val)."""
    tiers = preset.tiers
    with console.status("training the centralized routers (MiniLM embeddings) ..."):
        embedder = Embedder()
        train_x = embedder.encode([question_text(t) for t in splits["train"]])
        train_y = centralized.correctness_matrix(splits["train"], labels, tiers)
        models = {"knn": centralized.KnnModel(preset.knn_k).fit(train_x, train_y),
                  "mlp": centralized.MlpModel(preset.mlp_epochs, preset.seed).fit(train_x, train_y)}
        scorer = cascade.train_scorer(centralized.MlpModel(preset.mlp_epochs, preset.seed), embedder, splits["train"], labels, tiers)
        val_scores = cascade.AnswerScores(scorer, embedder, splits["val"], labels, tiers)
        questions = {split: [question_text(t) for t in splits[split]] for split in EVAL_SPLITS}
        vectors = {split: (embedder.encode(texts), embedder.single_ms(texts)) for split, texts in questions.items()}
        scores = {split: cascade.AnswerScores(scorer, embedder, splits[split], labels, tiers) for split in EVAL_SPLITS}
    thresholds: dict[str, list[float]] = {}

    def run_cascade(split: str, pool: str, members: list[Tier], alpha: float) -> list[Outcome]:
        chosen = cascade.val_thresholds(val_scores, splits["val"], labels, tiers, members, alpha)
        thresholds[f"{pool}/{alpha:g}"] = list(chosen)
        return cascade.run_cascade(splits[split], scores[split], labels, tiers, members, chosen)

    def routed(name: str) -> Method:
        return lambda split, pool, members, alpha: centralized.route(
            models[name], splits[split], vectors[split][0], vectors[split][1], labels, tiers, members, alpha)

    methods: dict[str, Method] = {
        "oracle": lambda split, pool, members, alpha: baselines.oracle(splits[split], labels, members),
        "smallest": lambda split, pool, members, alpha: baselines.fixed(splits[split], labels, members[0]),
        "largest": lambda split, pool, members, alpha: baselines.fixed(splits[split], labels, members[-1]),
        "random": lambda split, pool, members, alpha: baselines.random_tier(splits[split], labels, members, preset.seed),
        "knn": routed("knn"), "mlp": routed("mlp"), "cascade": run_cascade,
    }
    return methods, {"cascade_thresholds": thresholds, "knn_k": preset.knn_k, "mlp_epochs": preset.mlp_epochs}


def offline_rows(preset: Preset, splits: dict[str, list[Task]], methods: dict[str, Method]) -> list[dict[str, Any]]:
    """A row per (split, pool, alpha) for each router computed from labels."""
    rows = []
    for split in EVAL_SPLITS:
        for pool, members in preset.pools().items():
            for alpha in preset.alphas:
                for name, method in methods.items():
                    rows.append(row(split, pool, alpha, name, method(split, pool, members, alpha), [t.key for t in members]))
    return rows


async def live_method(
    preset: Preset, arm: str, policy: str, server: NatsServer, splits: dict[str, list[Task]], labels: Labels,
    out: Path, console: Console, join: bool, calibrations: dict[str, Path] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One self-routing method through a live mesh: every pool, split and alpha (and the runtime join);
    ``calibrations``: tier key -> the calibration file its node loads (else the one beside its model)."""
    method = f"{arm}_{policy}"
    prefix = f"quality-{method.replace('_', '-')}"
    topology = write_topology(preset, arm, policy, prefix, out / "mesh" / f"{method}.yaml")
    mesh = LiveMesh(server.url, prefix, topology, out / "mesh", console, calibrations or {})
    rows, joined = [], None
    by_key = {t.key: t for t in preset.tiers}
    try:
        await mesh.start(preset.keys)
        for pool, members in preset.pools().items():
            mesh.stop([key for key in mesh.nodes if key not in {t.key for t in members}])
            with progress_bar(console) as progress:
                for split in EVAL_SPLITS:
                    for alpha in preset.alphas:
                        job = progress.add_task(f"{method} {pool} {split} alpha={alpha:g}", total=len(splits[split]))
                        replies = await mesh.ask(splits[split], alpha, preset, on_done=lambda: progress.advance(job))
                        outcomes = [outcome(reply, by_key, labels) for reply in replies]
                        rows.append(row(split, pool, alpha, method, outcomes, [t.key for t in members]))
        missing = [t for t in preset.tiers if t.key not in mesh.nodes]
        if join and missing:
            with console.status(f"runtime join: starting tier {missing[0].key} while {method} serves queries ..."):
                joined = await runtime_join(mesh, missing[0], splits["in_domain"], min(preset.alphas), preset, method)
    finally:
        await asyncio.to_thread(mesh.stop)
    return rows, joined


def live_rows(
    preset: Preset, splits: dict[str, list[Task]], labels: Labels, out: Path, console: Console, calibrations: dict[str, dict[str, Path]],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every self-routing method; arms without checkpoints get 'not configured' rows. ``calibrations``:
    policy -> tier key -> calibration file, for policies whose thresholds the benchmark chose itself."""
    (out / "mesh").mkdir(parents=True, exist_ok=True)
    configured = [(arm, policy) for arm, policy in LIVE_METHODS if preset.configured(arm)]
    rows, joined = [], None
    with NatsServer() as server:
        for arm, policy in LIVE_METHODS:
            if (arm, policy) not in configured:
                rows += [row(split, pool, alpha, f"{arm}_{policy}", None, [], status="not configured")
                         for split in EVAL_SPLITS for pool in preset.pools() for alpha in preset.alphas]
                continue
            console.print(f"live mesh: {arm}_{policy}")
            method_rows, method_join = asyncio.run(live_method(
                preset, arm, policy, server, splits, labels, out, console, join=(arm, policy) == configured[-1],
                calibrations=calibrations.get(policy)))
            rows += method_rows
            joined = method_join or joined
    return rows, joined


def confidence_calibration(preset: Preset, splits: dict[str, list[Task]], labels: Labels, out: Path, console: Console) -> tuple[dict[str, dict[str, Path]], dict[str, Any]]:
    """The ``confidence`` policy's thresholds, chosen on val (``confidence.py``); none when its arm is not configured."""
    if not preset.configured("untrained"):
        return {}, {}
    with progress_bar(console) as progress:
        files, chosen = confidence.calibrate(preset, splits["val"], labels, out / "calibration", progress)
    return {confidence.POLICY: files}, chosen


def run(preset_name: str, out: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``out`` (default ``./bench-quality-<preset>``); returns the results payload."""
    console = console or Console()
    started, clock = datetime.now(timezone.utc), time.monotonic()
    preset = load_preset(preset_name)
    out = Path(out or f"bench-quality-{preset.name}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    phases: dict[str, float] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        begun = time.monotonic()
        result = work()
        phases[name] = round(time.monotonic() - begun, 1)
        return result

    timed("family", lambda: ensure_family(preset, console))
    preset.fill_costs()
    splits = load_splits(preset)
    write_queries(splits, out / "queries.jsonl")
    labels = timed("labels", lambda: all_labels(preset, splits, out, console))
    methods, details = timed("routers", lambda: offline_methods(preset, splits, labels, console))
    rows = timed("offline", lambda: offline_rows(preset, splits, methods))
    calibrations, details["confidence_thresholds"] = timed("calibration", lambda: confidence_calibration(preset, splits, labels, out, console))
    mesh_rows, joined = timed("live", lambda: live_rows(preset, splits, labels, out, console, calibrations))
    rows += mesh_rows
    comparisons = uncertainty.annotate(rows)
    details["phase_seconds"] = phases
    frontiers = {(split, pool): baselines.oracle_frontier(splits[split], labels, members)
                 for split in EVAL_SPLITS for pool, members in preset.pools().items()}
    payload = {
        "out": str(out),
        "meta": report.meta(started, time.monotonic() - clock, preset.name),
        "tiers": [{"key": t.key, "cost": t.cost, "model": str(t.model), "sft": t.sft and str(t.sft), "sftrl": t.sftrl and str(t.sftrl),
                   "answer_model": t.answer_model and str(t.answer_model)} for t in preset.tiers],
        "queries": {split: len(tasks) for split, tasks in splits.items()},
        "rows": rows,
        "runtime_join": joined,
        "details": details,
        "headline": headline(rows),
        "comparisons": comparisons,
    }
    report.write_json(out, payload)
    payload["plots"] = report.plots(out, rows, frontiers)
    (out / "results.md").write_text(report.markdown(payload))
    report.write_json(out, payload)
    return payload


def rewrite_report(out: Path) -> dict[str, Any]:
    """Recompute the headline of ``out/results.json`` and rewrite it and results.md, without running anything."""
    try:
        payload = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--report-only needs the results of a run in {out}: {exc}") from None
    payload["headline"] = headline(payload["rows"])
    report.write_json(out, payload)
    (out / "results.md").write_text(report.markdown(payload))
    return {**payload, "out": str(out)}


def main(preset_name: str, out: str | None = None, readme_file: str | None = None, report_only: bool = False) -> int:
    """The CLI entry: run (or, with ``report_only``, reread the results), print the in-domain utility table
    and the headline, rewrite the README's quality block; bad presets or task files fail in one line."""
    from rich.table import Table

    from disrouter.training.tasks import TaskFileError

    console = Console()
    folder = Path(out) if out else None
    try:
        if report_only:
            payload = rewrite_report(folder or Path(f"bench-quality-{preset_name}"))
        else:
            payload = run(preset_name, folder, console)
    except TaskFileError as exc:
        raise ValueError(str(exc).splitlines()[0] + " (" + exc.problems[0][1] + ")") from None
    rows = [r for r in payload["rows"] if r["split"] == "in_domain" and r["pool"] == "all"]
    alphas = sorted({r["alpha"] for r in rows})
    table = Table(title=f"utility, in-domain, all tiers ({payload['meta']['elapsed_s']} s)")
    table.add_column("method")
    for alpha in alphas:
        table.add_column(f"alpha {alpha:g}", justify="right")
    for method in report.METHODS:
        cells = {r["alpha"]: r for r in rows if r["method"] == method}
        table.add_row(method, *(f"{cells[a]['utility']:.3f}" if a in cells and cells[a]["status"] == "ok" else "-" for a in alphas))
    console.print(table)
    console.print(payload["headline"]["line"])
    if readme_file:
        readme.update_readme(Path(readme_file), payload, _relative(Path(payload["out"]) / "results.json"))
        console.print(f"README quality block rewritten: {readme_file}")
    console.print(f"results in {payload['out']}")
    return 0


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when it is under it (the README names it so)."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
