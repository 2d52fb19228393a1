"""A training stage's output folder: ``out_dir/model`` (written last: the completion marker),
``out_dir/training-log.json``, and the resume key that decides whether a finished folder is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import structlog

from .config import TrainingConfigError

log = structlog.get_logger("disrouter.training.output")

MODEL_DIR = "model"
MARKER_FILE = "disrouter-training.json"
"""Written into ``out_dir/model`` last: its presence means the folder is complete."""
LOG_FILE = "training-log.json"


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
