"""Stage 1, SFT: teach the model its knowledge boundary from its own probed competence.

For every training query and scenario alpha the target is the reject phrase when the paper's
label says so (``objective.should_reject``: competence p < 1 - alpha), else one of the model's own correct probe samples (so its knowledge is unchanged).
The prompt is the node's scenario chat (``with_scenario``, no demonstrations); accept and reject
examples are balanced per alpha; the loss covers the completion only. Output: ``out_dir/model``.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from disrouter.mesh.objective import DEFAULT_ALPHAS, check_alphas, should_reject, should_reject_in_mesh
from disrouter.node.prompts import REJECT_PHRASE, with_scenario

from .config import TrainingConfigError, config_from_dict
from .mesh_labels import load_ceiling
from .probe import ProbeRecord
from .stage import TrainingStage

log = structlog.get_logger("disrouter.training.sft")


@dataclass
class SFTStageConfig:
    """Settings of the SFT stage; ``from_dict`` reads a config file's ``sft`` section."""

    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    merge: bool = True  # merge the adapter into a full model folder (else save the PEFT adapter)
    epochs: float = 1.0
    max_steps: int = -1  # -1: epochs decide
    batch_size: int = 8
    gradient_accumulation: int = 1
    learning_rate: float = 2e-4
    max_length: int = 512
    seed: int = 0
    balance: bool = True  # downsample the majority of accept / reject examples per alpha
    max_examples: int | None = None
    ceiling_probe: str | None = None  # probe folder of the strongest tier: mesh-aware labels (should_reject_in_mesh); None: the paper's

    def __post_init__(self) -> None:
        try:
            self.alphas = [float(a) for a in self.alphas]
        except (TypeError, ValueError):
            raise TrainingConfigError(f"sft config: alphas must be a list of numbers, got {self.alphas!r}") from None
        problems = check_alphas(self.alphas)
        if self.lora_r < 1 or self.lora_alpha < 1:
            problems.append("lora_r and lora_alpha must be at least 1")
        if self.epochs <= 0 and self.max_steps < 1:
            problems.append("give epochs > 0 or max_steps >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append("max_steps must be -1 (epochs decide) or at least 1")
        if self.batch_size < 1 or self.gradient_accumulation < 1:
            problems.append("batch_size and gradient_accumulation must be at least 1")
        if self.learning_rate <= 0:
            problems.append("learning_rate must be positive")
        if self.max_length < 16:
            problems.append("max_length must be at least 16")
        if self.max_examples is not None and self.max_examples < 1:
            problems.append("max_examples must be at least 1")
        if problems:
            raise TrainingConfigError("sft config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SFTStageConfig:
        """A config from a mapping; unknown keys raise TrainingConfigError listing the known ones."""
        return config_from_dict(cls, data, "sft")


def _answer_target(record: ProbeRecord, alpha: float, seed: int, own: bool = False) -> str | None:
    """One of the record's correct samples, chosen by seed; finished ones before cut-off ones. ``own``:
    any of its own answers when none is correct (a task the mesh labels answer though hopeless)."""
    usable = [s for s in record.samples if not s.reject and s.text.strip()]
    correct = [s for s in usable if s.correct] or (usable if own else [])
    finished = [s for s in correct if s.finish_reason != "length"]
    pool = finished or correct
    if not pool:
        return None
    return random.Random(f"{seed}:{record.id}:{alpha}").choice(pool).text.strip()


def _balanced(accept: list[dict], reject: list[dict], rng: random.Random) -> list[dict]:
    """Both classes cut to the smaller one's size (a deterministic sample, original order kept)."""
    size = min(len(accept), len(reject))

    def cut(rows: list[dict]) -> list[dict]:
        keep = sorted(rng.sample(range(len(rows)), size))
        return [rows[i] for i in keep]

    return cut(accept) + cut(reject)


def build_sft_examples(records: list[ProbeRecord], config: SFTStageConfig, ceiling: dict[str, float] | None = None) -> list[dict]:
    """Conversational prompt/completion rows, one per (record, alpha) kept, with ``id``, ``alpha``
    and ``reject`` metadata; deterministic for a given seed. ``ceiling`` (competence of the strongest
    tier by id) switches to the mesh-aware label."""
    examples: list[dict] = []
    for alpha in config.alphas:
        accept: list[dict] = []
        reject: list[dict] = []
        for record in sorted(records, key=lambda r: r.id):
            if ceiling is None:
                rejects = should_reject(record.competence, alpha)
            else:
                rejects = should_reject_in_mesh(record.competence, alpha, ceiling[record.id])
            target = REJECT_PHRASE if rejects else _answer_target(record, alpha, config.seed, own=ceiling is not None)
            if target is None:
                continue  # labelled accept but no correct sample to imitate (cannot happen when p > 0)
            row = {
                "prompt": with_scenario(record.task.prompt_messages(), alpha, demonstrations=False),
                "completion": [{"role": "assistant", "content": target}],
                "id": record.id,
                "alpha": alpha,
                "reject": rejects,
            }
            (reject if rejects else accept).append(row)
        if config.balance:
            if not accept or not reject:
                log.warning("sft_alpha_one_class", alpha=alpha, accept=len(accept), reject=len(reject))
            kept = _balanced(accept, reject, random.Random(f"{config.seed}:balance:{alpha}"))
        else:
            kept = accept + reject
        log.info("sft_examples", alpha=alpha, accept=len(accept), reject=len(reject), kept=len(kept))
        examples += kept
    random.Random(f"{config.seed}:shuffle").shuffle(examples)
    return examples[: config.max_examples] if config.max_examples is not None else examples


class SFTStage(TrainingStage):
    """SFT on the reject-or-answer examples of the train split (completion-only loss)."""

    name = "sft"
    progress_keys = ("loss", "learning_rate")

    def rows(self) -> list[dict]:
        probe = self.config.ceiling_probe
        return build_sft_examples(self.records, self.config, load_ceiling(probe, self.records) if probe else None)

    def no_rows_message(self) -> str:
        return (f"no training examples from {len(self.records)} records: every alpha lacks accept or reject "
                "examples (probe more queries, or set balance: false)")

    def trl_classes(self) -> tuple[type, type]:
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, SFTTrainer

    def arguments(self) -> dict[str, Any]:
        config = self.config
        return {"num_train_epochs": config.epochs, "max_steps": config.max_steps, "per_device_train_batch_size": config.batch_size,
                "gradient_accumulation_steps": config.gradient_accumulation, "learning_rate": config.learning_rate,
                "max_length": config.max_length, "completion_only_loss": True}

    def dataset_rows(self, rows: list[dict]) -> list[dict]:
        return [{"prompt": row["prompt"], "completion": row["completion"]} for row in rows]

    def summary(self, rows: list[dict], trainer: Any) -> dict[str, Any]:
        losses = [row["loss"] for row in trainer.state.log_history if row.get("loss") is not None]
        return {"examples": len(rows), "reject_examples": sum(e["reject"] for e in rows),
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def train_sft(config: SFTStageConfig, records: list[ProbeRecord], model: str | Path, out_dir: Path, progress: bool = True) -> Path:
    """Fine-tune ``model`` on ``records`` (the train split) and return ``out_dir/model`` (see TrainingStage.run)."""
    return SFTStage(config, records).run(model, out_dir, progress)
