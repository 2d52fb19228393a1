"""Hugging Face pieces the trainers share: the base model's folder and weights, devices and
precision, LoRA, library verbosity, and the TrainingArguments both stages use."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any


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
