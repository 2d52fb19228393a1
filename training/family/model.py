"""Tiers of the family: stock ``LlamaForCausalLM`` models, their size, compute and cost.

Cost is proportional to compute per token, 2 FLOPs per weight of every matrix a token passes
(the layers and the output head; the embedding lookup is free), scaled so the strongest tier
costs ``top_cost`` (0.9, the paper's largest cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TierSpec:
    """One tier: its architecture and its training budget."""

    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int
    steps: int  # optimiser steps
    lr: float
    batch_size: int = 32  # packed rows per step

    def llama_config(self, vocab_size: int, context: int, pad_id: int, eos_id: int) -> Any:
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=context,
            tie_word_embeddings=True,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            bos_token_id=None,
        )

    def matmul_weights(self, vocab_size: int) -> int:
        """Weights a token is multiplied by: attention and MLP of every layer, and the output head."""
        per_layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate
        return self.layers * per_layer + vocab_size * self.hidden


def flops_per_token(spec: TierSpec, vocab_size: int) -> int:
    return 2 * spec.matmul_weights(vocab_size)


def tier_costs(specs: list[TierSpec], vocab_size: int, top_cost: float = 0.9) -> dict[str, float]:
    """Cost per tier, proportional to compute per token, the strongest tier at ``top_cost``."""
    flops = {spec.name: flops_per_token(spec, vocab_size) for spec in specs}
    most = max(flops.values())
    return {name: round(top_cost * value / most, 3) for name, value in flops.items()}
