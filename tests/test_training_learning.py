"""SFT learns: a tiny run on a handful of examples changes the weights and raises the targets' likelihood."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_training_stages import RECORDS

from disrouter.node.backends import load_backend
from disrouter.training.sft import SFTStageConfig, build_sft_examples, train_sft

LEARNING_RATE = float(os.environ.get("DISROUTER_TEST_SFT_LR", "1e-3"))
"""Set DISROUTER_TEST_SFT_LR=1e-12 to see this test fail when training does not move the model."""


async def _target_logprobs(folder: Path, examples: list[dict]) -> list[float]:
    """log P(target completion | prompt) per example, read with the node's transformers backend."""
    backend = load_backend("transformers", str(folder))
    try:
        return [(await backend.continuation_logprob(e["prompt"], e["completion"][0]["content"]))[0] for e in examples]
    finally:
        await backend.close()


def _largest_weight_change(before: Path, after: Path) -> float:
    old, new = load_file(str(before / "model.safetensors")), load_file(str(after / "model.safetensors"))
    shared = [name for name in new if name in old and old[name].shape == new[name].shape]
    assert len(shared) > 10, f"trained and base models share few tensors: {sorted(new)[:5]}"
    return max(float((new[name].float() - old[name].float()).abs().max()) for name in shared)


@pytest.mark.slow
async def test_a_tiny_sft_run_moves_the_model_toward_its_targets(tmp_path: Path, smollm2_folder: Path) -> None:
    config = SFTStageConfig(alphas=[0.5], balance=False, max_steps=6, batch_size=4, learning_rate=LEARNING_RATE, max_length=192)
    examples = build_sft_examples(RECORDS, config)
    assert len(examples) == len(RECORDS) and any(e["reject"] for e in examples) and not all(e["reject"] for e in examples)
    before = await _target_logprobs(smollm2_folder, examples)

    folder = train_sft(config, RECORDS, smollm2_folder, tmp_path / "sft", progress=False)

    after = await _target_logprobs(folder, examples)
    gains = [new - old for old, new in zip(before, after, strict=True)]
    print(f"target log-likelihood gains (nats): {[round(gain, 2) for gain in gains]}")
    assert all(gain > 0 for gain in gains), f"target log-likelihood fell on some examples: {gains}"
    assert sum(gains) / len(gains) > 1.0, f"mean gain {sum(gains) / len(gains):.3f} nats per target: {gains}"
    assert _largest_weight_change(smollm2_folder, folder) > 1e-4
