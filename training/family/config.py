"""The family run a YAML file describes: world, corpus, splits, tokenizer, tiers, evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog


from ..config import TrainingConfigError, read_settings_file
from .model import TierSpec

VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256)
"""Attention head sizes vLLM's CPU backend serves (0.32); smaller heads only work with transformers."""

_KEYS = {"seed", "out", "commit_to", "world", "corpus", "splits", "tokenizer", "training", "tiers", "eval"}
log = structlog.get_logger("disrouter.training.family.config")
_TIER_KEYS = {"name", "hidden", "layers", "heads", "intermediate", "steps", "lr", "batch_size"}


@dataclass
class FamilyConfig:
    """Every setting of a family run (see training/configs/family.yaml for their meaning)."""

    path: Path
    out: Path
    tiers: list[TierSpec]
    seed: int = 0
    commit_to: Path | None = None
    world: dict[str, Any] = field(default_factory=dict)
    additions: dict[int, int] = field(default_factory=dict)
    system_share: float = 0.02
    sa_additions: dict[int, int] = field(default_factory=lambda: {level: 40 for level in range(1, 6)})
    ood_per_family: int = 100
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    vocab_size: int = 1024
    context: int = 128
    long_context: int = 192
    max_positions: int = 512
    samples: int = 4
    temperature: float = 0.7
    max_new_tokens: int = 8
    threads: int = 2
    parallel: bool = False  # each tier in its own process (one thread each)

    @classmethod
    def load(cls, path: str | Path, out: str | Path | None = None) -> FamilyConfig:
        """Read ``path``; every error names the file and the key."""
        path = Path(path)
        data = read_settings_file(path, _KEYS)
        if out is None and "out" not in data:
            raise TrainingConfigError(f"{path}: no output folder: give --out or set out")
        tiers = [_tier(path, i, raw) for i, raw in enumerate(data.get("tiers") or [])]
        if len(tiers) < 1 or len({t.name for t in tiers}) != len(tiers):
            raise TrainingConfigError(f"{path}: tiers: give at least one tier, each with a unique name")
        corpus, splits = dict(data.get("corpus") or {}), dict(data.get("splits") or {})
        training, evaluation = dict(data.get("training") or {}), dict(data.get("eval") or {})
        try:
            return cls(
                path=path,
                out=Path(out or data["out"]),
                tiers=tiers,
                seed=int(data.get("seed", 0)),
                commit_to=Path(data["commit_to"]) if data.get("commit_to") else None,
                world=dict(data.get("world") or {}),
                additions={int(k): int(v) for k, v in (corpus.get("additions") or {}).items()},
                system_share=float(corpus.get("system_share", 0.02)),
                sa_additions={int(k): int(v) for k, v in (splits.get("sa_additions") or {level: 40 for level in range(1, 6)}).items()},
                ood_per_family=int(splits.get("ood_per_family", 100)),
                fractions={k: float(v) for k, v in (splits.get("fractions") or {"train": 0.7, "val": 0.15, "test": 0.15}).items()},
                vocab_size=int((data.get("tokenizer") or {}).get("vocab_size", 1024)),
                context=int(training.get("context", 128)),
                long_context=int(training.get("long_context", 192)),
                max_positions=int(training.get("max_positions", 512)),
                threads=int(training.get("threads", 2)),
                parallel=bool(training.get("parallel", False)),
                samples=int(evaluation.get("samples", 4)),
                temperature=float(evaluation.get("temperature", 0.7)),
                max_new_tokens=int(evaluation.get("max_new_tokens", 8)),
            )
        except (TypeError, ValueError) as exc:
            raise TrainingConfigError(f"{path}: {exc}") from None


def _tier(path: Path, index: int, raw: object) -> TierSpec:
    if not isinstance(raw, dict):
        raise TrainingConfigError(f"{path}: tiers[{index}] must be a mapping")
    unknown = sorted(set(raw) - _TIER_KEYS)
    missing = sorted(_TIER_KEYS - {"batch_size"} - set(raw))
    if unknown or missing:
        raise TrainingConfigError(f"{path}: tiers[{index}]: unknown keys {unknown}, missing {missing}")
    try:
        spec = TierSpec(**{**raw, "lr": float(raw["lr"])})
    except (TypeError, ValueError) as exc:
        raise TrainingConfigError(f"{path}: tiers[{index}]: {exc}") from None
    if spec.hidden % spec.heads or min(spec.hidden, spec.layers, spec.heads, spec.intermediate, spec.steps) < 1:
        raise TrainingConfigError(f"{path}: tiers[{index}]: sizes must be positive and hidden divisible by heads")
    if spec.hidden // spec.heads not in VLLM_HEAD_SIZES:
        log.warning("head_size_not_served_by_vllm", tier=spec.name, head_size=spec.hidden // spec.heads, supported=VLLM_HEAD_SIZES)
    return spec
