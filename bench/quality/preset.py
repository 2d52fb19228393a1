"""Benchmark presets: which tiers (and their trained checkpoints), which queries, which alphas.

A preset is a YAML file; relative paths in it are resolved against the file's folder, and
``{cache}`` stands for the disrouter cache folder (``$DISROUTER_CACHE``, else ``~/.cache/disrouter``).
The packaged presets (``smoke``, ``full``) live in ``presets/``::

    family: {config: PATH, out: PATH}   # optional: `disrouter train family` builds missing tiers
    topology: PATH              # optional: costs of tiers listed without one, by key
    tiers:                      # cheapest first; the last is the fallback that always answers
      - {key: small, model: PATH, cost: 0.1, sft: PATH, sftrl: PATH, answer_model: PATH}
                                # answer_model (optional): these weights write the SFT / SFT+RL probe
                                # arms' answers, the checkpoint decides (the node's --answer-model)
    tasks:                      # files in the task format, or the ids of one split of a file
      train: {file: PATH, split: train}
      val: {file: PATH, split: val}
      in_domain: {file: PATH, split: test}
      ood: PATH
    limits: {train: 400, val: 200, in_domain: 200, ood: 200}       # queries taken per split
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from disrouter.mesh.objective import DEFAULT_ALPHAS
from disrouter.mesh.subjects import subject_token
from disrouter.mesh.topology import load_topology
from disrouter.node.backends.sources import cache_root
from disrouter.mesh.yamlfile import read_yaml_mapping

PRESETS_DIR = Path(__file__).with_name("presets")
Split = Literal["train", "val", "in_domain", "ood"]
SPLITS: tuple[Split, ...] = ("train", "val", "in_domain", "ood")
EVAL_SPLITS: tuple[Split, ...] = ("in_domain", "ood")
ARMS = ("untrained", "sft", "sftrl")
"""Self-routing arms: prompted base tiers, SFT-only checkpoints, SFT+RL checkpoints."""


class PresetError(ValueError):
    """A preset that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tier(_Strict):
    key: str = Field(min_length=1)
    model: Path  # the base (untrained) model folder
    cost: float | None = Field(default=None, ge=0.0)  # None: the preset's topology file gives it
    sft: Path | None = None  # SFT-only checkpoint (with its disrouter-calibration.json)
    sftrl: Path | None = None  # SFT+RL checkpoint
    answer_model: Path | None = None  # writes the trained probe arms' answers (node --answer-model), e.g. the base model

    def answers_with(self, arm: str, policy: str) -> Path | None:
        """The node's --answer-model in ``arm`` under ``policy``: only a trained checkpoint under probe has one."""
        return self.answer_model if policy == "probe" and arm != "untrained" else None

    def checkpoint(self, arm: str) -> Path | None:
        """The model folder this tier serves in ``arm``."""
        return {"untrained": self.model, "sft": self.sft, "sftrl": self.sftrl}[arm]


class TaskSource(_Strict):
    """A task file, or the part of it that ``disrouter.training.splits.split_of`` puts in one split."""

    file: Path
    split: Literal["train", "val", "test"] | None = None


class Family(_Strict):
    config: Path  # `disrouter train family --config CONFIG --out OUT` builds the tiers when missing
    out: Path | None = None


class Preset(_Strict):
    name: str = "custom"
    family: Family | None = None
    topology: Path | None = None  # a topology file giving the costs of tiers listed without one (read once the family exists)
    tiers: list[Tier] = Field(min_length=2)
    tasks: dict[Split, TaskSource]
    limits: dict[Split, int] = Field(default_factory=dict)
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    max_tokens: int = Field(default=32, ge=1)
    in_flight: int = Field(default=8, ge=1)  # queries outstanding at once, for every method alike
    timeout_s: float = Field(default=120.0, gt=0)
    knn_k: int = Field(default=10, ge=1)
    mlp_epochs: int = Field(default=200, ge=1)
    seed: int = 0
    join_queries: int = Field(default=16, ge=1)  # queries sent after a runtime-joined tier registers

    @model_validator(mode="after")
    def _consistent(self) -> "Preset":
        missing = [split for split in SPLITS if split not in self.tasks]
        if missing:
            raise ValueError(f"tasks needs a file for every split; missing: {', '.join(missing)}")
        keys = [tier.key for tier in self.tiers]
        if len(set(keys)) != len(keys) or any(subject_token(k) != k for k in keys):
            raise ValueError("tier keys must be unique and contain only letters, digits, '_' and '-'")
        if any(t.cost is None for t in self.tiers) and self.topology is None:
            raise ValueError("give every tier a cost, or a topology file that has them")
        self._check_order()
        if any(not 0.0 <= a <= 1.0 for a in self.alphas):
            raise ValueError("alphas must lie within [0, 1]")
        return self

    def _check_order(self) -> None:
        costs = [t.cost for t in self.tiers if t.cost is not None]
        if costs != sorted(costs):
            raise ValueError("tiers must be listed cheapest first")

    def fill_costs(self) -> None:
        """Costs of tiers listed without one, from the preset's topology file (by model key)."""
        if all(t.cost is not None for t in self.tiers):
            return
        assert self.topology is not None
        entries = {entry.key: entry.cost for entry in load_topology(self.topology).models}
        for tier in self.tiers:
            if tier.cost is None:
                if tier.key not in entries:
                    raise PresetError(f"preset {self.name}: tier {tier.key} has no cost and {self.topology} does not list it")
                tier.cost = entries[tier.key]
        try:
            self._check_order()
        except ValueError as exc:
            raise PresetError(f"preset {self.name}: {exc} (costs from {self.topology})") from None

    @property
    def keys(self) -> list[str]:
        return [tier.key for tier in self.tiers]

    def pools(self) -> dict[str, list[Tier]]:
        """``all`` tiers, and ``no_middle`` (the middle tier removed) when there are at least three."""
        pools = {"all": list(self.tiers)}
        if len(self.tiers) >= 3:
            middle = self.tiers[len(self.tiers) // 2]
            pools["no_middle"] = [t for t in self.tiers if t is not middle]
        return pools

    def configured(self, arm: str) -> bool:
        """Whether every tier but the strongest has a checkpoint on disk for ``arm`` (the strongest serves its base model)."""
        return all(
            (folder := tier.checkpoint(arm)) is not None and (folder / "config.json").is_file() for tier in self.tiers[:-1]
        )


def _resolve(data: dict, base: Path) -> dict:
    """Relative paths in tiers, tasks and family made absolute against ``base``."""
    def absolute(value: object) -> object:
        if value is None:
            return None
        path = Path(str(value).replace("{cache}", str(cache_root()))).expanduser()
        return str((base / path).resolve())

    data = dict(data)
    data["tiers"] = [
        {k: absolute(v) if k in ("model", "sft", "sftrl", "answer_model") else v for k, v in tier.items()} if isinstance(tier, dict) else tier
        for tier in data.get("tiers", [])
    ]
    if isinstance(data.get("tasks"), dict):
        data["tasks"] = {
            k: {"file": absolute(v.get("file")), **{n: x for n, x in v.items() if n != "file"}} if isinstance(v, dict) else {"file": absolute(v)}
            for k, v in data["tasks"].items()
        }
    if data.get("topology") is not None:
        data["topology"] = absolute(data["topology"])
    if isinstance(data.get("family"), dict):
        data["family"] = {k: absolute(v) for k, v in data["family"].items()}
    return data


def preset_path(name_or_path: str) -> Path:
    """A packaged preset's file (``smoke``, ``full``) or the given YAML file."""
    packaged = PRESETS_DIR / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        return path
    names = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
    raise PresetError(f"unknown preset {name_or_path!r}; choose from {names} or give a YAML file")


def load_preset(name_or_path: str) -> Preset:
    """Read and validate a preset; errors name the file and the field."""
    path = preset_path(name_or_path)
    raw = read_yaml_mapping(path, "preset file", PresetError, "must be a mapping with 'tiers' and 'tasks'")
    raw.setdefault("name", path.stem)
    try:
        return Preset.model_validate(_resolve(raw, path.resolve().parent))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise PresetError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
