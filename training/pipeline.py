"""The training run a config file describes: probe -> SFT -> RL -> evaluation and calibration.

Output folder (``--out``, else the config's ``out``)::

    tasks.jsonl          the tasks (generated when the config asks for synthetic ones)
    probe/               Stage 0: competence and every sample (resumable)
    sft/model/           Stage 1 model          rl/model/   Stage 2 model
    model/               the final model, with disrouter-calibration.json for the node
    report.md, report.json, *.png    evaluation on held-out queries

Every stage skips work a previous run finished, so ``disrouter train all`` resumes.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from disrouter.mesh.objective import DEFAULT_ALPHAS, DEFAULT_GAMMA, check_alphas

from .config import TrainingConfigError, read_settings_file
from .probe import ProbeConfig, load_records, run_probe
from .splits import DEFAULT_FRACTIONS, SPLIT_SOURCES, select, select_by_meta
from .synthetic import write_synthetic

log = structlog.get_logger("disrouter.training.pipeline")

Stage = Literal["probe", "sft", "rl", "eval"]
STAGES: tuple[Stage, ...] = ("probe", "sft", "rl", "eval")
_TOP_LEVEL = {"model", "out", "tasks", "alphas", "gamma", "splits", "stages", *STAGES}
_SHARED = {"sft": ("alphas",), "rl": ("alphas", "gamma"), "eval": ("alphas", "gamma")}
"""The run-wide settings (top of the config) each stage receives."""


@dataclass
class TrainConfig:
    """A whole run: the base model, where the tasks come from, and one section per stage."""

    model: str
    out: Path
    tasks: dict[str, Any]  # {file: PATH, format: tasks|gsm8k|mmlu|arc, split: hash|meta} or {synthetic: {kinds, per_level, seed, max_level}}
    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))  # the scenarios every stage covers
    gamma: float = DEFAULT_GAMMA  # the reward's exponent, for RL, evaluation and calibration
    splits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    split_seed: int = 0
    stages: tuple[Stage, ...] = STAGES  # which stages `all` runs (rl may be left out)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_dir: Path = Path(".")

    def section(self, stage: Stage) -> dict[str, Any]:
        """A stage's settings with the run-wide ones (alphas, gamma) it takes."""
        shared = {"alphas": self.alphas, "gamma": self.gamma}
        section = {**self.sections[stage], **{key: shared[key] for key in _SHARED.get(stage, ())}}
        if section.get("ceiling_probe"):  # a path relative to the config file, as tasks.file
            section["ceiling_probe"] = str(self.base_dir / section["ceiling_probe"])
        return section

    @classmethod
    def load(cls, path: str | Path, out: str | Path | None = None) -> TrainConfig:
        """Read a YAML config; errors name the file and the key."""
        path = Path(path)
        data = read_settings_file(path, _TOP_LEVEL)
        for key in ("model", "tasks"):
            if key not in data:
                raise TrainingConfigError(f"{path}: missing {key}")
        if out is None and "out" not in data:
            raise TrainingConfigError(f"{path}: no output folder: give --out or set out")
        nested = sorted(f"{stage}.{key}" for stage in STAGES for key in ("alphas", "gamma") if key in (data.get(stage) or {}))
        if nested:
            raise TrainingConfigError(f"{path}: {', '.join(nested)}: set alphas and gamma once, at the top of the config")
        splits = dict(data.get("splits") or DEFAULT_FRACTIONS)
        tasks = data["tasks"]
        if not isinstance(tasks, dict) or tasks.get("split", "hash") not in SPLIT_SOURCES:
            raise TrainingConfigError(f"{path}: tasks must be a mapping whose split (if given) is one of {', '.join(SPLIT_SOURCES)}")
        stages = tuple(data.get("stages") or STAGES)
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise TrainingConfigError(f"{path}: stages {bad} are not among {', '.join(STAGES)}")
        return cls(
            model=str(data["model"]),
            out=Path(out or data["out"]),
            tasks=dict(data["tasks"]),
            alphas=_alphas(path, data.get("alphas", DEFAULT_ALPHAS)),
            gamma=_gamma(path, data.get("gamma", DEFAULT_GAMMA)),
            splits={k: float(v) for k, v in splits.items() if k != "seed"},
            split_seed=int(splits.get("seed", 0)),
            stages=stages,
            sections={stage: dict(data.get(stage) or {}) for stage in STAGES},
            base_dir=path.parent,
        )


def _alphas(path: Path, value: Any) -> list[float]:
    try:
        alphas = [float(alpha) for alpha in value]
    except (TypeError, ValueError):
        raise TrainingConfigError(f"{path}: alphas must be a list of numbers, got {value!r}") from None
    problems = check_alphas(alphas)
    if problems:
        raise TrainingConfigError(f"{path}: " + "; ".join(problems))
    return alphas


def _gamma(path: Path, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise TrainingConfigError(f"{path}: gamma must be a positive number, got {value!r}")
    return float(value)


class Pipeline:
    """Runs the stages of one config; each stage reads what the previous one left in ``out``."""

    def __init__(self, config: TrainConfig, progress: bool = True) -> None:
        self.config = config
        self.out = config.out
        self.progress = progress

    # --- stages -------------------------------------------------------------------------------

    def run(self, stage: Stage | Literal["all"]) -> None:
        for name in self.config.stages if stage == "all" else (stage,):
            started = time.perf_counter()
            log.info("stage_started", stage=name, out=str(self.out))
            getattr(self, f"_{name}")()
            log.info("stage_finished", stage=name, seconds=round(time.perf_counter() - started, 1))

    def _probe(self) -> None:
        section = {**self.config.sections["probe"], "model": self.config.model, "tasks": str(self.tasks_file()),
                   "tasks_format": self.config.tasks.get("format", "tasks")}
        asyncio.run(run_probe(ProbeConfig.from_dict(section), self.out / "probe", progress=self.progress))

    def _sft(self) -> None:
        from .sft import SFTStageConfig, train_sft

        stage = SFTStageConfig.from_dict(self.config.section("sft"))
        train_sft(stage, self.records("train"), self.config.model, self.out / "sft", progress=self.progress)

    def _rl(self) -> None:
        from .rl import RLStageConfig, train_rl

        stage = RLStageConfig.from_dict(self.config.section("rl"))
        start = self._model_after("sft")
        train_rl(stage, self.records("train"), start, self.out / "rl", progress=self.progress)

    def _eval(self) -> None:
        from .calibrate import calibrate, write_calibration
        from .evaluate import EvalStageConfig, evaluate_model
        from .report import write_report

        stage = EvalStageConfig.from_dict(self.config.section("eval"))
        trained_folder = self._final_model()
        val, test = self.records("val"), self.records("test")
        if not val or not test:
            raise TrainingConfigError(f"eval needs validation and test queries; got {len(val)} and {len(test)}: probe more tasks")
        calibration_rows = asyncio.run(evaluate_model(trained_folder, val, stage, demonstrations=False, generate=False, progress=self.progress))
        calibration = calibrate(calibration_rows, stage.alphas, stage.gamma)
        write_calibration(calibration, trained_folder)
        trained = asyncio.run(evaluate_model(trained_folder, test, stage, demonstrations=False, progress=self.progress))
        prompted, base_correct = asyncio.run(self._base_model_eval(stage, test)) if stage.baseline else (None, None)
        meta = {"base_model": self.config.model, "trained_model": str(trained_folder), "stages": list(self.config.stages),
                "queries": {split: len(self.records(split)) for split in ("train", "val", "test")}}
        write_report(self.out, trained, prompted, calibration, meta, base_correct)

    async def _base_model_eval(self, stage: Any, test: list) -> tuple[Any, dict[str, bool]]:
        """The base model on the test queries, loaded once: prompted with demonstrations under each
        scenario, and its greedy answers to the plain questions (the always-answer baseline)."""
        from .evaluate import base_answers, evaluate_model, open_backend

        backend = await open_backend(self.config.model, stage)
        try:
            prompted = await evaluate_model(self.config.model, test, stage, demonstrations=True, progress=self.progress, backend=backend)
            return prompted, await base_answers(self.config.model, test, stage, progress=self.progress, backend=backend)
        finally:
            await backend.close()

    # --- inputs and outputs -------------------------------------------------------------------

    def tasks_file(self) -> Path:
        """The task JSONL: the config's file, or synthetic tasks generated once into ``out``."""
        spec = self.config.tasks
        if "file" in spec:
            path = Path(spec["file"])
            return path if path.is_absolute() else self.config.base_dir / path
        if "synthetic" not in spec:
            raise TrainingConfigError("tasks: give file: PATH or synthetic: {kinds, per_level, seed, max_level}")
        target = self.out / "tasks.jsonl"
        if not target.exists():
            self.out.mkdir(parents=True, exist_ok=True)
            write_synthetic(target, **dict(spec["synthetic"] or {}))
        return target

    def records(self, split: Literal["train", "val", "test"]) -> list:
        done = load_records(self.out / "probe")
        if not done:
            raise TrainingConfigError(f"no probe results in {self.out / 'probe'}: run `disrouter train probe` first")
        if self.config.tasks.get("split") == "meta":
            try:
                return select_by_meta(done.values(), split)
            except ValueError as exc:
                raise TrainingConfigError(str(exc)) from None
        return select(done.values(), split, fractions=self.config.splits, seed=self.config.split_seed)

    def _model_after(self, stage: Stage) -> str:
        """The model a stage starts from: the previous stage's output when it ran, else the base."""
        folder = self.out / stage / "model"
        return str(folder) if (folder / "config.json").exists() else self.config.model

    def _final_model(self) -> Path:
        """``out/model``: a copy of the last trained stage's model (refreshed when that is newer)."""
        source = next((self.out / s / "model" for s in ("rl", "sft") if (self.out / s / "model" / "config.json").exists()), None)
        if source is None:
            raise TrainingConfigError(f"no trained model in {self.out}: run the sft (and rl) stages first")
        final = self.out / "model"
        if not final.exists() or (source / "config.json").stat().st_mtime > (final / "config.json").stat().st_mtime:
            shutil.rmtree(final, ignore_errors=True)
            shutil.copytree(source, final)
        return final
