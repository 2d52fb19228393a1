"""Topology files: a mesh's models ordered cheapest to strongest, with their costs.

```yaml
mesh: demo                  # a name for people
prefix: disrouter           # subject prefix (optional)
models:
  - key: small              # unique key; the NATS subject token for its replicas
    model: smollm2-135m     # what `disrouter-node` loads (known name, HF folder or .gguf)
    cost: 0.1               # normalised cost; cascades order live members by it
    policy: generate        # generate | probe | confidence | always (optional)
    answer_model: small-base  # probe policy only: these weights write the answers (optional)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .subjects import DEFAULT_PREFIX, subject_token
from .yamlfile import read_yaml_mapping


class TopologyError(Exception):
    """A topology file that cannot be used; the message names the file and the bad field."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    model: str = Field(min_length=1)
    cost: float = Field(ge=0.0)
    policy: Literal["generate", "probe", "confidence", "always"] | None = None
    answer_model: str | None = Field(default=None, min_length=1)  # probe only: the weights that write the answers
    entry: bool | None = None
    max_tokens: int | None = Field(default=None, ge=1)

    @field_validator("key")
    @classmethod
    def _key_is_token(cls, value: str) -> str:
        if subject_token(value) != value:
            raise ValueError("key must contain only letters, digits, '_' and '-'")
        return value


class Topology(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mesh: str = "disrouter"
    prefix: str = DEFAULT_PREFIX
    models: list[ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_keys(self) -> "Topology":
        seen: set[str] = set()
        for entry in self.models:
            if entry.key in seen:
                raise ValueError(f"model key {entry.key!r} appears twice")
            seen.add(entry.key)
        return self

    def cascade(self) -> list[ModelEntry]:
        """Models cheapest first (file order breaks ties)."""
        return sorted(self.models, key=lambda e: e.cost)

    def find(self, name: str) -> tuple[int, ModelEntry] | None:
        """The entry whose key, or else whose model, is ``name``, with its cascade position."""
        cascade = self.cascade()
        for match in (lambda e: e.key == name, lambda e: e.model == name):
            for position, entry in enumerate(cascade):
                if match(entry):
                    return position, entry
        return None

    def is_entry(self, entry: ModelEntry) -> bool:
        """Entry tier: marked `entry: true`, or the cheapest model when none is marked."""
        marked = [e for e in self.models if e.entry]
        return entry.entry is True if marked else entry.key == self.cascade()[0].key


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology YAML file; errors name the file and the field."""
    path = Path(path)
    raw = read_yaml_mapping(path, "topology file", TopologyError, "must be a mapping with a 'models' list")
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise TopologyError(f"{path}: {where}: {err['msg']}") from None
