"""Helpers shared by the SFT and RL stages: config parsing, the base model, devices, and the
stage output folder (``out_dir/model`` plus ``out_dir/training-log.json``) with its resume marker."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = structlog.get_logger("disrouter.training.common")

MODEL_DIR = "model"
MARKER_FILE = "disrouter-training.json"
"""Written into ``out_dir/model`` last: its presence means the folder is complete."""
LOG_FILE = "training-log.json"

C = TypeVar("C")


class TrainingConfigError(Exception):
    """A training stage cannot run: a bad config, no usable examples, or a stale output folder."""


def config_from_dict(cls: type[C], data: Mapping[str, Any] | None, section: str) -> C:
    """A dataclass config from a mapping (e.g. a YAML section); unknown keys are refused, listing the known ones."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise TrainingConfigError(f"{section} config: unknown keys {unknown}; known keys: {', '.join(sorted(names))}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise TrainingConfigError(f"{section} config: {exc}") from None


def model_folder(model: str | Path) -> Path:
    """A Hugging Face folder for ``model``: a known name (smollm2-135m), a folder, or a .gguf file."""
    from disrouter.node.backends.sources import local_folder, resolve

    return local_folder(resolve(str(model)))


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16() -> bool:
    """Whether to load the weights in bf16: on a CUDA device that supports it; fp32 elsewhere."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def mixed_bf16() -> bool:
    """bf16 precision for the trainer: on CUDA (with bf16 weights); fp32 on CPU, where bf16 autocast on
    CPUs with native bf16 is about 1.5x faster per step but learns less per step with LoRA
    (measured on SmolLM2). ``DISROUTER_TRAIN_BF16=0|1`` overrides."""
    forced = os.environ.get("DISROUTER_TRAIN_BF16", "").strip().lower()
    if forced in {"0", "1", "false", "true", "no", "yes"}:
        return forced in {"1", "true", "yes"}
    return use_bf16()


def load_model_and_tokenizer(folder: Path) -> tuple[Any, Any]:
    """The causal LM (fp32 on CPU, bf16 on CUDA) and its tokenizer, with a pad token set."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = torch.bfloat16 if use_bf16() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return model, tokenizer


def lora_config(r: int, alpha: int) -> Any:
    """A LoRA adapter on every linear layer of a causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def quiet_libraries(progress: bool) -> None:
    """Keep transformers, datasets and TRL to warnings; hide datasets' bars unless ``progress``."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    if progress:
        datasets.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()
    else:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def compact_progress(trainer: Any, keys: tuple[str, ...]) -> None:
    """Swap the trainer's progress bar for one that prints only ``keys`` of each step's log, not every
    metric; without a bar (``disable_tqdm``) nothing is printed (the logs still reach the trainer state)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class CompactProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {key: round(logs[key], 4) for key in keys if isinstance(logs.get(key), (int, float))}
                if shown:
                    self.training_bar.write(f"step {state.global_step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))

    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress())


def resume_key(config: Any, model_dir: Path, record_ids: list[str]) -> dict[str, Any]:
    """What must match for a finished stage to be reused: the settings, the starting model (and the
    run that trained it, when it came from an earlier stage), and the training queries."""
    marker = model_dir / MARKER_FILE
    return {
        "config": dataclasses.asdict(config),
        "model": str(model_dir),
        "model_run": hashlib.sha256(marker.read_bytes()).hexdigest()[:16] if marker.is_file() else None,
        "records": len(record_ids),
        "record_ids": hashlib.sha256("\n".join(sorted(record_ids)).encode()).hexdigest()[:16],
    }


def finished_model(out_dir: Path, resume_key: dict[str, Any]) -> Path | None:
    """``out_dir/model`` when a previous run completed it with the same settings; None when there is
    nothing to reuse (an incomplete folder is removed). Other settings raise TrainingConfigError."""
    folder = out_dir / MODEL_DIR
    marker = folder / MARKER_FILE
    if not marker.is_file():
        if folder.exists():
            log.warning("training_incomplete_model_removed", folder=str(folder))
            shutil.rmtree(folder)
        return None
    saved = json.loads(marker.read_text()).get("resume_key", {})
    current = json.loads(json.dumps(resume_key))  # the same JSON round trip the saved key went through
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        raise TrainingConfigError(
            f"{folder} was trained with other settings ({', '.join(changed)} differ); "
            "delete it or use another output folder to train again"
        )
    return folder


def save_model(model: Any, tokenizer: Any, out_dir: Path, merge: bool, summary: dict[str, Any]) -> Path:
    """Write ``out_dir/model`` (a merged full model, or the PEFT adapter when a LoRA run does not
    merge), the tokenizer, and last the completion marker; ``summary`` also goes to training-log.json."""
    from peft import PeftModel

    folder = out_dir / MODEL_DIR
    if folder.exists():
        shutil.rmtree(folder)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (out_dir / LOG_FILE).write_text(json.dumps(summary, indent=2, default=_jsonable) + "\n")
    marker = {key: summary[key] for key in ("stage", "resume_key", "seconds", "steps") if key in summary}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2, default=_jsonable) + "\n")
    return folder


def run_summary(stage: str, resume_key: dict[str, Any], trainer: Any, started: float, **extra: Any) -> dict[str, Any]:
    """What a finished training run reports: steps, seconds, seconds per step, and the trainer's log."""
    seconds = time.perf_counter() - started
    steps = int(trainer.state.global_step)
    history = [{k: _finite(v) for k, v in row.items()} for row in trainer.state.log_history]
    runtime = next((row["train_runtime"] for row in reversed(history) if "train_runtime" in row), None)
    return {
        "stage": stage,
        "resume_key": resume_key,
        "steps": steps,
        "seconds": round(seconds, 2),
        "train_seconds": runtime,
        "seconds_per_step": round(runtime / steps, 3) if runtime and steps else None,
        **extra,
        "log_history": history,
    }


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _jsonable(value: Any) -> Any:
    return str(value)


def progress_bar(stage: str, enabled: bool = True) -> Progress:
    """The bar every stage shows on stderr: ``stage`` then the task's description, count and times."""
    return Progress(
        TextColumn(f"[bold]{stage}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def trainer_settings(out_dir: Path, seed: int, progress: bool) -> dict[str, Any]:
    """TrainingArguments both stages share: seeds, precision, device, logging every step, no checkpoints."""
    return {
        "output_dir": str(out_dir / "trainer"),
        "seed": seed,
        "data_seed": seed,
        "bf16": mixed_bf16(),
        "gradient_checkpointing": use_cuda(),  # saves GPU memory on big models; only slows small CPU runs
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": not progress,
        "use_cpu": not use_cuda(),
        "dataloader_num_workers": 0,
    }
