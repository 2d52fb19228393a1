"""Stage 2, RL: GRPO with the paper's cost-aware reward, the scenario sampled per prompt.

Reward: ``objective.reward`` (1 for a correct answer, 0 for a wrong one, (1 - alpha) ** gamma for
the reject phrase), so answering pays in expectation only above ``objective.answer_pays_threshold``.
Correctness comes from the task graders. Output: ``out_dir/model`` (same contract as SFT).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from disrouter.mesh import objective
from disrouter.mesh.objective import DEFAULT_ALPHAS, DEFAULT_GAMMA, check_alphas
from disrouter.node.prompts import is_reject, with_scenario

from .config import TrainingConfigError, config_from_dict
from .graders import grade
from .mesh_labels import load_ceiling
from .probe import ProbeRecord
from .stage import TrainingStage
from .tasks import Task

@dataclass
class RLStageConfig:
    """Settings of the RL stage; ``from_dict`` reads a config file's ``rl`` section."""

    alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
    gamma: float = DEFAULT_GAMMA
    num_generations: int = 4  # completions per prompt (the GRPO group)
    max_completion_length: int = 64
    temperature: float = 1.0
    max_steps: int = 20
    batch_size: int = 8  # completions per step: batch_size / num_generations prompts
    learning_rate: float = 1e-5
    beta: float = 0.0  # KL weight against the starting model (0: no reference model is kept)
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    merge: bool = True
    seed: int = 0
    max_prompts: int | None = None
    ceiling_probe: str | None = None  # probe folder of the strongest tier: mesh-aware reward (objective.mesh_reward); None: the paper's

    def __post_init__(self) -> None:
        try:
            self.alphas = [float(a) for a in self.alphas]
        except (TypeError, ValueError):
            raise TrainingConfigError(f"rl config: alphas must be a list of numbers, got {self.alphas!r}") from None
        problems = check_alphas(self.alphas)
        if self.gamma <= 0:
            problems.append("gamma must be positive")
        if self.num_generations < 2:
            problems.append("num_generations must be at least 2 (GRPO compares completions of one prompt)")
        elif self.batch_size < 1 or self.batch_size % self.num_generations:
            problems.append(f"batch_size ({self.batch_size}) must be a positive multiple of num_generations ({self.num_generations})")
        if self.max_completion_length < 1 or self.max_steps < 1:
            problems.append("max_completion_length and max_steps must be at least 1")
        if not 0.0 < self.temperature <= 5.0:
            problems.append("temperature must be within (0, 5]")
        if self.learning_rate <= 0 or self.beta < 0:
            problems.append("learning_rate must be positive and beta not negative")
        if self.lora_r < 1 or self.lora_alpha < 1:
            problems.append("lora_r and lora_alpha must be at least 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append("max_prompts must be at least 1")
        if problems:
            raise TrainingConfigError("rl config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RLStageConfig:
        """A config from a mapping; unknown keys raise TrainingConfigError listing the known ones."""
        return config_from_dict(cls, data, "rl")


def reward(task: Task, completion: str, alpha: float, gamma: float, forward_helps: bool = True) -> float:
    """The reward of one completion, graded against ``task``: the paper's (``objective.reward``), or
    with ``forward_helps`` false the mesh's (``objective.mesh_reward``: rejecting earns 0)."""
    return objective.mesh_reward(is_reject(completion), float(grade(task, completion)), alpha, gamma, forward_helps)


def build_rl_prompts(records: list[ProbeRecord], config: RLStageConfig, count: int | None = None,
                     ceiling: dict[str, float] | None = None) -> list[dict]:
    """GRPO dataset rows (``prompt`` = the scenario chat, ``task`` = the task JSON, ``alpha``, ``id``,
    ``forward_helps``: False where ``ceiling``, the strongest tier's competence by id, is no better than
    the record's own): the records (at most ``max_prompts``) repeated until there are ``count`` rows,
    each repetition drawing a fresh alpha per prompt; deterministic for a given seed."""
    rng = random.Random(f"{config.seed}:rl")
    chosen = sorted(records, key=lambda r: r.id)
    rng.shuffle(chosen)
    chosen = chosen[: config.max_prompts] if config.max_prompts is not None else chosen
    if not chosen:
        return []
    rows: list[dict] = []
    while len(rows) < max(count or 0, len(chosen)):
        for record in chosen:
            alpha = rng.choice(config.alphas)
            prompt = with_scenario(record.task.prompt_messages(), alpha, demonstrations=False)
            helps = ceiling is None or objective.forwarding_helps(record.competence, ceiling[record.id])
            rows.append({"prompt": prompt, "task": record.task.model_dump_json(), "alpha": alpha, "id": record.id, "forward_helps": helps})
    return rows


@lru_cache(maxsize=4096)
def _task(task_json: str) -> Task:
    return Task.model_validate_json(task_json)


def _text(completion: Any) -> str:
    """The assistant's text from a conversational completion (a list of messages) or a plain string."""
    if isinstance(completion, list):
        return str(completion[-1].get("content") or "") if completion else ""
    return str(completion)


def make_reward_function(gamma: float) -> Callable[..., list[float]]:
    """The GRPO reward function: reads the ``task`` and ``alpha`` columns, logs reject and accuracy rates."""

    def disrouter_reward(prompts: list, completions: list, task: list[str], alpha: list[float], **kwargs: Any) -> list[float]:
        texts = [_text(c) for c in completions]
        helps = kwargs.get("forward_helps") or [True] * len(texts)
        rewards = [reward(_task(t), text, a, gamma, h) for t, text, a, h in zip(task, texts, alpha, helps, strict=True)]
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and texts:
            rejects = [is_reject(text) for text in texts]
            log_metric("reject_rate", sum(rejects) / len(texts))
            log_metric("correct_rate", sum(r == 1.0 and not j for r, j in zip(rewards, rejects, strict=True)) / len(texts))
        return rewards

    return disrouter_reward


class RLStage(TrainingStage):
    """GRPO on the train split's prompts, each repetition drawing a fresh alpha per prompt."""

    name = "rl"
    progress_keys = ("reward", "reject_rate", "correct_rate", "completions/mean_length", "loss")

    def rows(self) -> list[dict]:
        config = self.config
        ceiling = load_ceiling(config.ceiling_probe, self.records) if config.ceiling_probe else None
        return build_rl_prompts(self.records, config, count=config.max_steps * config.batch_size // config.num_generations, ceiling=ceiling)

    def no_rows_message(self) -> str:
        return "no training records (the train split is empty)"

    def trl_classes(self) -> tuple[type, type]:
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer

    def arguments(self) -> dict[str, Any]:
        config = self.config
        return {"max_steps": config.max_steps, "per_device_train_batch_size": config.batch_size, "num_generations": config.num_generations,
                "max_completion_length": config.max_completion_length, "temperature": config.temperature,
                "learning_rate": config.learning_rate, "beta": config.beta}

    def trainer_options(self) -> dict[str, Any]:
        return {"reward_funcs": make_reward_function(self.config.gamma)}

    def summary(self, rows: list[dict], trainer: Any) -> dict[str, Any]:
        rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
        return {"prompts": len(rows), "mean_reward": round(sum(rewards) / len(rewards), 4) if rewards else None,
                "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None}


def train_rl(config: RLStageConfig, records: list[ProbeRecord], model: str | Path, out_dir: Path, progress: bool = True) -> Path:
    """GRPO-train ``model`` (usually the SFT output) on ``records`` (the train split) and return
    ``out_dir/model`` (see TrainingStage.run)."""
    return RLStage(config, records).run(model, out_dir, progress)
