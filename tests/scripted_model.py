"""Tiny real transformers models whose greedy output is fixed, for mechanism tests.

Each is a one-layer LlamaForCausalLM with the SmolLM2 tokenizer, whose weights are set (not
trained) so it works as a bigram table: attention and MLP outputs are zero, the residual stream is
a one-hot embedding of the current token, and the LM head maps it to the next token of the
scripted reply. Whatever the prompt, greedy decoding after the chat template's generation prompt
yields the reply, then end-of-turn. They run through the same code as any model.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


def build_scripted_model(tokenizer: PreTrainedTokenizerBase, reply: str, folder: Path, *, stop: bool = True) -> Path:
    """Save a model that always replies ``reply`` (and then stops, unless ``stop`` is False)."""
    generation_prompt = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True)["input_ids"]
    chain = [generation_prompt[-1], *tokenizer(reply, add_special_tokens=False)["input_ids"]]
    if stop:
        chain.append(tokenizer.eos_token_id)
    if len(set(chain)) != len(chain):
        raise ValueError(f"reply {reply!r} repeats a token; a bigram script needs distinct tokens")
    hidden = 64
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        for slot, (token, successor) in enumerate(zip(chain, chain[1:])):
            model.model.embed_tokens.weight[token, slot] = 1.0
            model.lm_head.weight[successor, slot] = 20.0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class SlowForward:
    """Test double for a slow device: every forward pass of ``model`` takes ``seconds`` longer, and
    pass number ``hold_at`` (if given) blocks until ``release`` is set, like a pass that hangs.

    ``calls`` counts forward passes (prefill and decoding steps); ``held`` is set when the held pass
    starts waiting and ``resumed`` when it goes on (released, or after 60 s). ``hanging()`` says
    whether it waits now. ``remove()`` restores the model and releases any held pass.
    """

    def __init__(self, model: torch.nn.Module, seconds: float = 0.0, hold_at: int | None = None) -> None:
        self.seconds = seconds
        self.hold_at = hold_at
        self.calls = 0
        self.held = threading.Event()
        self.resumed = threading.Event()
        self.release = threading.Event()
        self._handle = model.register_forward_pre_hook(self._before)

    def _before(self, module: torch.nn.Module, args: tuple) -> None:
        self.calls += 1
        if self.calls == self.hold_at:
            self.held.set()
            self.release.wait(timeout=60)
            self.resumed.set()
        time.sleep(self.seconds)

    def hanging(self) -> bool:
        return self.held.is_set() and not self.resumed.is_set()

    def remove(self) -> None:
        self.release.set()
        self._handle.remove()
