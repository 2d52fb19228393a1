"""`disrouter train mesh --config FILE`: mesh-utility calibration of every self-aware tier, per arm.

Config (paths relative to the file)::

    topology: PATH          # costs of tiers listed without one, by key
    val: PATH               # validation tasks (never the test split)
    test: PATH              # optional: held-out tasks, only evaluated (the baselines table), never calibrated on
    alphas: [0.2, 0.5, 0.8]
    max_tokens: 16          # as the mesh is asked (bench quality's max_tokens)
    out: PATH               # mesh-calibration.json / .md (the measured val figures)
    demonstrations: false   # how the trained tiers prompt (training writes false)
    tiers:                  # cheapest first; the last always answers and is not calibrated
      - {key: family-s, checkpoints: {sft: PATH, sftrl: PATH}, answer_model: PATH, policy: probe}   # answer_model, policy: optional
      - {key: family-l, model: PATH}

Each arm (a name under ``checkpoints``) is one mesh: its checkpoint of every lower tier plus the
strongest ``model``; a tier with ``answer_model`` is measured as a node with ``--answer-model`` serves
it (its checkpoint decides, those weights answer); a tier's ``policy`` (``probe``, default, or ``confidence``:
the doubt in its own answer) is the node policy it is measured with and calibrated for. Per arm and alpha
the thresholds are chosen top-down (``mesh_calibration``) and written into each lower checkpoint's ``disrouter-calibration.json`` (the node's format, with
``objective: mesh`` and the val figures added; the node ignores extra keys; ``policy`` names the tier's).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from disrouter.mesh.objective import DEFAULT_ALPHAS
from disrouter.mesh.topology import TopologyError, load_topology
from disrouter.node.calibration import CALIBRATION_FILENAME

from .config import TrainingConfigError, read_settings_file
from .mesh_baselines import compare_mesh, comparison_figures, table
from .mesh_calibration import MeshResult, Thresholds, TierRows, calibrate_mesh, node_calibration, oracle_result
from .mesh_measure import Outcomes, measure_tier
from .progress import progress_bar
from .tasks import load_tasks

log = structlog.get_logger("disrouter.training.mesh")


class MeshTier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    cost: float | None = Field(default=None, ge=0.0)
    model: Path | None = None  # the strongest tier's folder
    checkpoints: dict[str, Path] = Field(default_factory=dict)  # arm -> a lower tier's trained folder
    answer_model: Path | None = None  # a lower tier's weights that write its answers (node --answer-model), every arm
    policy: Literal["probe", "confidence"] = "probe"  # a lower tier's node policy: what it is measured and calibrated with


class MeshConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tiers: list[MeshTier] = Field(min_length=2)
    val: Path
    out: Path
    test: Path | None = None  # held-out tasks: only evaluated (mesh_baselines), thresholds stay chosen on val
    topology: Path | None = None
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    max_tokens: int = Field(default=16, ge=1)
    in_flight: int = Field(default=16, ge=1)
    backend: str = "transformers"
    demonstrations: bool = False

    def arms(self) -> list[str]:
        return list(self.tiers[0].checkpoints)

    def mesh(self, arm: str) -> list[Path]:
        """The folders of ``arm``'s mesh, cheapest first."""
        return [*(tier.checkpoints[arm] for tier in self.tiers[:-1]), self.tiers[-1].model]  # type: ignore[list-item]


def load_mesh_config(path: str | Path) -> MeshConfig:
    """Read and check a mesh calibration config; errors name the file."""
    path = Path(path)
    data = read_settings_file(path, set(MeshConfig.model_fields))
    try:
        config = MeshConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise TrainingConfigError(f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
    def near(folder: Path) -> Path:  # relative to the config file, without "dir/.." detours
        return Path(os.path.normpath(path.parent / folder))

    config.val, config.out = near(config.val), near(config.out)
    config.topology = near(config.topology) if config.topology else None
    config.test = near(config.test) if config.test else None
    for tier in config.tiers:
        tier.model = near(tier.model) if tier.model else None
        tier.checkpoints = {arm: near(folder) for arm, folder in tier.checkpoints.items()}
        tier.answer_model = near(tier.answer_model) if tier.answer_model else None
    _check(path, config)
    return config


def _check(path: Path, config: MeshConfig) -> None:
    arms = config.arms()
    if not arms:
        raise TrainingConfigError(f"{path}: the cheapest tier lists no checkpoints (arm -> folder)")
    for tier in config.tiers[:-1]:
        if sorted(tier.checkpoints) != sorted(arms):
            raise TrainingConfigError(f"{path}: tier {tier.key} lists arms {sorted(tier.checkpoints)}, the cheapest {sorted(arms)}")
        if tier.answer_model and tier.policy != "probe":
            raise TrainingConfigError(f"{path}: tier {tier.key}: answer_model needs policy probe, not {tier.policy}")
    if config.tiers[-1].model is None:
        raise TrainingConfigError(f"{path}: the strongest tier {config.tiers[-1].key} needs model: FOLDER")
    if any(tier.cost is None for tier in config.tiers):
        if config.topology is None:
            raise TrainingConfigError(f"{path}: give every tier a cost, or a topology file that has them")
        try:
            costs = {entry.key: entry.cost for entry in load_topology(config.topology).models}
        except TopologyError as exc:
            raise TrainingConfigError(str(exc)) from None
        for tier in config.tiers:
            if tier.cost is None and tier.key not in costs:
                raise TrainingConfigError(f"{path}: tier {tier.key} has no cost and {config.topology} does not list it")
            tier.cost = costs[tier.key] if tier.cost is None else tier.cost
    costs = [tier.cost for tier in config.tiers]
    if costs != sorted(costs):
        raise TrainingConfigError(f"{path}: tiers must be listed cheapest first; costs {costs}")
    for folder in {*(f for arm in arms for f in config.mesh(arm)), *(t.answer_model for t in config.tiers if t.answer_model)}:
        if not (folder / "config.json").is_file():
            raise TrainingConfigError(f"{path}: {folder} is not a model folder (no config.json)")


def measure_all(config: MeshConfig, progress: bool = True, tasks_file: Path | None = None) -> dict[Path, Outcomes]:
    """Every distinct folder of every arm, measured once on the val tasks (or ``tasks_file``'s)."""
    tasks = load_tasks(tasks_file or config.val)
    strongest = config.tiers[-1].model
    folders = list(dict.fromkeys(f for arm in config.arms() for f in config.mesh(arm)))
    lower = {folder: tier for tier in config.tiers[:-1] for folder in tier.checkpoints.values()}
    measured: dict[Path, Outcomes] = {}
    with progress_bar("mesh", progress) as bar:
        for folder in folders:
            is_strongest = folder == strongest
            job = bar.add_task(folder.name if folder.name not in ("sft", "sftrl", "model") else f"{folder.parent.name}/{folder.name}",
                               total=len(tasks) * (1 if is_strongest else len(config.alphas)))
            measured[folder] = asyncio.run(measure_tier(
                folder, tasks, config.alphas, strongest=is_strongest, demonstrations=config.demonstrations,
                max_tokens=config.max_tokens, in_flight=config.in_flight, backend=config.backend, progress=bar, job=job,
                answer_folder=lower[folder].answer_model if folder in lower else None,
                policy=lower[folder].policy if folder in lower else "probe"))
    return measured


def tier_rows(config: MeshConfig, arm: str, measured: dict[Path, Outcomes], alpha: float) -> tuple[list[TierRows], list[str]]:
    """``arm``'s mesh under ``alpha`` as measured (cheapest first), and the measured query ids."""
    folders = config.mesh(arm)
    rows = [TierRows(tier.key, float(tier.cost), measured[folder][alpha]) for tier, folder in zip(config.tiers, folders)]
    return rows, sorted(measured[folders[0]][alpha])


def calibrate_arm(config: MeshConfig, arm: str, measured: dict[Path, Outcomes]) -> dict[str, Any]:
    """Thresholds per alpha for ``arm``'s lower tiers, with the val figures of the mesh they make."""
    per_alpha = {}
    for alpha in config.alphas:
        rows, ids = tier_rows(config, arm, measured, alpha)
        thresholds, results = calibrate_mesh(rows, alpha, ids)
        top = rows[-1]
        largest = MeshResult(alpha, len(ids), sum(top.outcomes[i].correct for i in ids) / len(ids), top.cost, {top.key: 1.0})
        per_alpha[alpha] = {"thresholds": thresholds, "mesh": results, "oracle": oracle_result(rows, alpha, ids), "largest": largest}
        for tier, chosen in zip(config.tiers, thresholds):
            log.info("mesh_calibration", arm=arm, alpha=alpha, tier=tier.key, threshold=round(chosen.answer, 4), skip=round(chosen.skip, 4),
                     val_utility=round(results[0].utility, 4))
            if chosen.degenerate:
                log.warning("calibration_degenerate_threshold", arm=arm, alpha=alpha, tier=tier.key, threshold=chosen.answer,
                            meaning="reject every query" if chosen.answer == 0.0 else "answer every query")
    return per_alpha


def write_tier_calibrations(config: MeshConfig, arm: str, per_alpha: dict[float, dict[str, Any]]) -> list[Path]:
    """Each lower checkpoint's ``disrouter-calibration.json``: the node's format plus the mesh's provenance."""
    written = []
    for index, (tier, folder) in enumerate(zip(config.tiers[:-1], config.mesh(arm))):
        chosen: dict[float, Thresholds] = {alpha: figures["thresholds"][index] for alpha, figures in per_alpha.items()}
        calibration = node_calibration(chosen, tier.policy, config.demonstrations)
        document = calibration.model_dump(mode="json") | {
            "objective": "mesh",
            "mesh": {"tiers": [t.key for t in config.tiers], "costs": [t.cost for t in config.tiers], "val": str(config.val),
                     "answer_model": str(tier.answer_model) if tier.answer_model else None,
                     "val_utility_from_tier": {str(a): round(f["mesh"][index].utility, 4) for a, f in per_alpha.items()},
                     "degenerate": {str(a): t.answer for a, t in chosen.items() if t.degenerate}},
        }
        path = folder / CALIBRATION_FILENAME
        path.write_text(json.dumps(document, indent=2) + "\n")
        log.info("calibration_written", tier=tier.key, arm=arm, path=str(path))
        written.append(path)
    return written


def _figures(result: MeshResult) -> dict[str, Any]:
    return {"utility": round(result.utility, 4), "accuracy": round(result.accuracy, 4), "cost": round(result.cost, 4),
            "share": {key: round(value, 4) for key, value in result.share.items()}}


def _cell(thresholds: dict[str, Any]) -> str:
    answer = f"{thresholds['answer']:.3g}" + (" (degenerate)" if thresholds["degenerate"] else "")
    return answer + " / " + ("never" if thresholds["skip"] >= 1 else f"{thresholds['skip']:.3g}")


def tier_baselines(config: MeshConfig, arms: dict[str, dict[float, dict[str, Any]]], splits: dict[str, dict[Path, Outcomes]]) -> dict[str, Any]:
    """split -> arm -> alpha -> tier -> each trained tier against the trivial baselines (``mesh_baselines``), val's thresholds."""
    figures: dict[str, Any] = {}
    for split, measured in splits.items():
        for arm, per_alpha in arms.items():
            for alpha, chosen in per_alpha.items():
                rows, ids = tier_rows(config, arm, measured, alpha)
                figures.setdefault(split, {}).setdefault(arm, {})[str(alpha)] = {
                    c.key: comparison_figures(c) for c in compare_mesh(rows, chosen["thresholds"], alpha, ids)}
    return figures


def write_report(config: MeshConfig, arms: dict[str, dict[float, dict[str, Any]]], baselines: dict[str, Any] | None = None) -> Path:
    """``out/mesh-calibration.json`` and ``.md``: per arm and alpha the thresholds and the val figures
    of the whole mesh next to the oracle and the strongest tier alone (on the same val queries), then
    ``baselines`` (``tier_baselines``) when given."""
    config.out.mkdir(parents=True, exist_ok=True)
    document = {"val": str(config.val), "tiers": [{"key": t.key, "cost": t.cost, "answer_model": t.answer_model and str(t.answer_model)}
                                                  for t in config.tiers], "arms": {
        arm: {str(alpha): {"thresholds": {t.key: {"answer": th.answer, "skip": th.skip, "degenerate": th.degenerate}
                                          for t, th in zip(config.tiers, f["thresholds"])},
                           "mesh": _figures(f["mesh"][0]), "from_tier": {t.key: _figures(r) for t, r in zip(config.tiers, f["mesh"])},
                           "oracle": _figures(f["oracle"]), "largest": _figures(f["largest"])}
              for alpha, f in per_alpha.items()} for arm, per_alpha in arms.items()}}
    if baselines is not None:
        document |= {"test": config.test and str(config.test), "baselines": baselines}
    (config.out / "mesh-calibration.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = ["# Mesh-utility calibration (validation queries)", "",
             f"`disrouter train mesh`; val: `{config.val}`; utility = accuracy - alpha * cost (the answering tier's cost).",
             *(f"{t.key} answers with `{t.answer_model}` (its checkpoint decides)." for t in config.tiers if t.answer_model), "",
             "| arm | alpha | " + " | ".join(f"{t.key} threshold / skip" for t in config.tiers[:-1]) +
             " | mesh utility | accuracy | cost | share by tier | oracle | largest |", "|" + "---|" * (len(config.tiers) + 8)]
    for arm, per_alpha in document["arms"].items():
        for alpha, f in per_alpha.items():
            cells = [_cell(th) for th in f["thresholds"].values()]
            share = ", ".join(f"{k} {v:.2f}" for k, v in f["mesh"]["share"].items())
            lines.append(f"| {arm} | {alpha} | " + " | ".join(cells) + f" | {f['mesh']['utility']:.3f} | {f['mesh']['accuracy']:.3f} | "
                         f"{f['mesh']['cost']:.3f} | {share} | {f['oracle']['utility']:.3f} | {f['largest']['utility']:.3f} |")
    if baselines is not None:
        lines += ["", *table(baselines)]
    path = config.out / "mesh-calibration.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_rows(config: MeshConfig, measured: dict[Path, Outcomes]) -> Path:
    """``out/mesh-rows.jsonl``: every measured (folder, alpha, query) with P(reject) and correctness."""
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / "mesh-rows.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for folder, outcomes in measured.items():
            for alpha, rows in outcomes.items():
                for query_id, outcome in rows.items():
                    handle.write(json.dumps({"folder": str(folder), "alpha": alpha, "id": query_id,
                                             "p_reject": outcome.p_reject, "correct": outcome.correct}) + "\n")
    return path


def run_mesh_calibration(config_path: str | Path, progress: bool = True) -> Path:
    """Measure, calibrate every arm, write the tiers' calibration files and the report; returns the report."""
    config = load_mesh_config(config_path)
    measured = measure_all(config, progress)
    write_rows(config, measured)
    arms = {arm: calibrate_arm(config, arm, measured) for arm in config.arms()}
    for arm, per_alpha in arms.items():
        write_tier_calibrations(config, arm, per_alpha)
    splits = {"val": measured} | ({"test": measure_all(config, progress, config.test)} if config.test else {})
    return write_report(config, arms, tier_baselines(config, arms, splits))
