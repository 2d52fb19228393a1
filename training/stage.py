"""The skeleton SFT and RL share: resume or build rows, load the model, train, save, report.

A stage subclass says only what differs: its rows, its trainer, and what its summary adds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import structlog

from .config import TrainingConfigError
from .hf import load_model_and_tokenizer, lora_config, model_folder, quiet_libraries, trainer_settings
from .output import finished_model, resume_key, run_summary, save_model
from .probe import ProbeRecord
from .progress import compact_progress


class TrainingStage(ABC):
    """One trainer run over probed records; ``run`` is the whole stage, output in ``out_dir/model``."""

    name: str  # "sft" or "rl": the stage's log events and summary
    progress_keys: tuple[str, ...]  # the trainer's log values shown per step

    def __init__(self, config: Any, records: list[ProbeRecord]) -> None:
        self.config = config
        self.records = records
        self.log = structlog.get_logger(f"disrouter.training.{self.name}")

    @abstractmethod
    def rows(self) -> list[dict]:
        """The training rows (empty: nothing to train on)."""

    @abstractmethod
    def no_rows_message(self) -> str:
        """Why ``rows`` came back empty, and what to do."""

    @abstractmethod
    def trl_classes(self) -> tuple[type, type]:
        """The TRL arguments class and trainer class of this stage."""

    @abstractmethod
    def arguments(self) -> dict[str, Any]:
        """This stage's TrainingArguments, on top of those both stages share (``trainer_settings``)."""

    def dataset_rows(self, rows: list[dict]) -> list[dict]:
        """The columns of ``rows`` the trainer reads."""
        return rows

    def trainer_options(self) -> dict[str, Any]:
        """Further keyword arguments of the trainer (e.g. RL's reward function)."""
        return {}

    def trainer(self, rows: list[dict], network: Any, tokenizer: Any, settings: dict[str, Any]) -> Any:
        """A TRL trainer over ``rows``, with a LoRA adapter when the config asks for one."""
        from datasets import Dataset

        arguments_class, trainer_class = self.trl_classes()
        config = self.config
        return trainer_class(
            model=network,
            args=arguments_class(**settings, **self.arguments()),
            train_dataset=Dataset.from_list(self.dataset_rows(rows)),
            processing_class=tokenizer,
            peft_config=lora_config(config.lora_r, config.lora_alpha) if config.lora else None,
            **self.trainer_options(),
        )

    def summary(self, rows: list[dict], trainer: Any) -> dict[str, Any]:
        """What this stage adds to training-log.json and the done event."""
        return {}

    def run(self, model: str | Path, out_dir: Path, progress: bool = True) -> Path:
        """Train ``model`` and return ``out_dir/model``; a folder a previous run completed with the
        same settings is returned without training."""
        out_dir = Path(out_dir)
        base = model_folder(model)
        key = resume_key(self.config, base, [r.id for r in self.records])
        done = finished_model(out_dir, key)
        if done is not None:
            self.log.info(f"{self.name}_resumed", model=str(done))
            return done
        rows = self.rows()
        if not rows:
            raise TrainingConfigError(f"{self.name}: {self.no_rows_message()}")
        quiet_libraries(progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        network, tokenizer = load_model_and_tokenizer(base)
        trainer = self.trainer(rows, network, tokenizer, trainer_settings(out_dir, self.config.seed, progress))
        compact_progress(trainer, self.progress_keys)
        self.log.info(f"{self.name}_start", rows=len(rows), base=str(base), lora=self.config.lora, out=str(out_dir))
        started = time.perf_counter()
        trainer.train()
        extra = self.summary(rows, trainer)
        summary = run_summary(self.name, key, trainer, started, **extra)
        folder = save_model(trainer.model, tokenizer, out_dir, self.config.merge, summary)
        self.log.info(f"{self.name}_done", steps=summary["steps"], seconds=summary["seconds"],
                      seconds_per_step=summary["seconds_per_step"], model=str(folder), **extra)
        return folder
