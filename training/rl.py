"""Stage 2, RL: GRPO with the paper's cost-aware reward, the scenario sampled per prompt.

Reward: ``objective.reward`` (1 for a correct answer, 0 for a wrong one, (1 - alpha) ** gamma for
the reject phrase), so answering pays in expectation only above ``objective.answer_pays_threshold``.
Correctness comes from the task graders. Output: ``out_dir/model`` (same contract as SFT).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import structlog

from disrouter.mesh import objective
from disrouter.mesh.objective import DEFAULT_ALPHAS, DEFAULT_GAMMA, check_alphas
from disrouter.node.prompts import is_reject, with_scenario

from .common import (
    TrainingConfigError,
    compact_progress,
    config_from_dict,
    finished_model,
    load_model_and_tokenizer,
    lora_config,
    model_folder,
    quiet_libraries,
    resume_key,
    run_summary,
    save_model,
    trainer_settings,
)
from .graders import grade
from .probe import ProbeRecord
from .tasks import Task

log = structlog.get_logger("disrouter.training.rl")


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
    merge: bool = True
    seed: int = 0
    max_prompts: int | None = None

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
        if self.lora_r < 1:
            problems.append("lora_r must be at least 1")
        if self.max_prompts is not None and self.max_prompts < 1:
            problems.append("max_prompts must be at least 1")
        if problems:
            raise TrainingConfigError("rl config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RLStageConfig:
        """A config from a mapping; unknown keys raise TrainingConfigError listing the known ones."""
        return config_from_dict(cls, data, "rl")


def reward(task: Task, completion: str, alpha: float, gamma: float) -> float:
    """The paper's reward (``objective.reward``) of one completion, graded against ``task``."""
    return objective.reward(is_reject(completion), float(grade(task, completion)), alpha, gamma)


def build_rl_prompts(records: list[ProbeRecord], config: RLStageConfig, count: int | None = None) -> list[dict]:
    """GRPO dataset rows (``prompt`` = the scenario chat, ``task`` = the task JSON, ``alpha``, ``id``):
    the records (at most ``max_prompts``) repeated until there are ``count`` rows, each repetition
    drawing a fresh alpha per prompt; deterministic for a given seed."""
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
            rows.append({"prompt": prompt, "task": record.task.model_dump_json(), "alpha": alpha, "id": record.id})
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
        rewards = [reward(_task(t), text, a, gamma) for t, text, a in zip(task, texts, alpha, strict=True)]
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and texts:
            rejects = [is_reject(text) for text in texts]
            log_metric("reject_rate", sum(rejects) / len(texts))
            log_metric("correct_rate", sum(r == 1.0 and not j for r, j in zip(rewards, rejects, strict=True)) / len(texts))
        return rewards

    return disrouter_reward


def train_rl(config: RLStageConfig, records: list[ProbeRecord], model: str | Path, out_dir: Path, progress: bool = True) -> Path:
    """GRPO-train ``model`` (usually the SFT output) on ``records`` (the train split) and return
    ``out_dir/model``; a folder a previous run completed with the same settings is returned as is."""
    out_dir = Path(out_dir)
    base = model_folder(model)
    key = resume_key(config, base, [r.id for r in records])
    done = finished_model(out_dir, key)
    if done is not None:
        log.info("rl_resumed", model=str(done))
        return done
    rows = build_rl_prompts(records, config, count=config.max_steps * config.batch_size // config.num_generations)
    if not rows:
        raise TrainingConfigError("rl: no training records (the train split is empty)")
    quiet_libraries(progress)
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    out_dir.mkdir(parents=True, exist_ok=True)
    network, tokenizer = load_model_and_tokenizer(base)
    args = GRPOConfig(
        **trainer_settings(out_dir, config.seed, progress),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        learning_rate=config.learning_rate,
        beta=config.beta,
    )
    trainer = GRPOTrainer(
        model=network,
        reward_funcs=make_reward_function(config.gamma),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(config.lora_r, 2 * config.lora_r) if config.lora else None,
    )
    compact_progress(trainer, ("reward", "reject_rate", "correct_rate", "completions/mean_length", "loss"))
    log.info("rl_start", prompts=len(rows), base=str(base), lora=config.lora, out=str(out_dir))
    started = time.perf_counter()
    trainer.train()
    history = trainer.state.log_history
    rewards = [row["reward"] for row in history if "reward" in row]
    mean_reward = round(sum(rewards) / len(rewards), 4) if rewards else None
    summary = run_summary("rl", key, trainer, started, prompts=len(rows), mean_reward=mean_reward,
                          first_reward=rewards[0] if rewards else None, last_reward=rewards[-1] if rewards else None)
    folder = save_model(trainer.model, tokenizer, out_dir, config.merge, summary)
    log.info("rl_done", steps=summary["steps"], seconds=summary["seconds"], seconds_per_step=summary["seconds_per_step"],
             mean_reward=mean_reward, first_reward=summary["first_reward"], last_reward=summary["last_reward"], model=str(folder))
    return folder
