"""Pretraining one tier from scratch: packed rows of chat examples, loss on the answers only.

Every example is rendered exactly as the chat template renders a served query (a user turn,
then the assistant's answer and ``<|end|>``); a share of them carries the node's scenario
instruction as a system message (and sometimes its demonstrations), so the served prompt
format is not new to the model. The budget is a number of optimiser steps, so the run is
reproducible; wall time and tokens per second are measured and reported.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from disrouter.node.prompts import with_scenario

from .model import TierSpec
from .questions import QA

log = structlog.get_logger("disrouter.training.family.train")

IGNORE = -100
SCENARIO_ALPHAS = (0.2, 0.5, 0.8)


@dataclass
class Encoded:
    """Token ids of one example and how many leading ids are the prompt (no loss on them)."""

    ids: list[int]
    prompt: int


def _prefixes(tokenizer) -> list[list[int]]:  # noqa: ANN001
    """Ids of the served prompt prefixes: scenario instruction, with and without demonstrations."""
    out = []
    for alpha in SCENARIO_ALPHAS:
        for shots in (False, True):
            turns = with_scenario([], alpha, demonstrations=shots)
            out.append(list(tokenizer.apply_chat_template(turns, add_generation_prompt=False)["input_ids"]))
    return out


def encode_examples(tokenizer, rows: list[QA], system_share: float, seed: int) -> list[Encoded]:  # noqa: ANN001
    """Ids of every example as the chat template renders it; ``system_share`` of them behind a
    scenario prefix. Batch-tokenised: equal to ``apply_chat_template`` (a test checks)."""
    special = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<|user|>", "<|assistant|>", "<|end|>")}
    questions = tokenizer([r.question for r in rows], add_special_tokens=False)["input_ids"]
    answers = tokenizer([r.answer for r in rows], add_special_tokens=False)["input_ids"]
    prefixes = _prefixes(tokenizer)
    rng = random.Random(f"system/{seed}")
    encoded = []
    for question, answer in zip(questions, answers):
        prefix = rng.choice(prefixes) if rng.random() < system_share else []
        prompt = [*prefix, special["<|user|>"], *question, special["<|end|>"], special["<|assistant|>"]]
        encoded.append(Encoded(prompt + answer + [special["<|end|>"]], len(prompt)))
    return encoded


def pack_rows(examples: list[Encoded], length: int, pad_id: int, rng: random.Random):  # noqa: ANN201
    """Examples in a random order packed into rows of ``length`` ids: (input ids, labels) tensors."""
    import torch

    order = list(range(len(examples)))
    rng.shuffle(order)
    inputs: list[list[int]] = []
    labels: list[list[int]] = []
    ids: list[int] = []
    targets: list[int] = []
    for index in order:
        example = examples[index]
        if len(example.ids) > length:
            continue
        if len(ids) + len(example.ids) > length:
            inputs.append(ids + [pad_id] * (length - len(ids)))
            labels.append(targets + [IGNORE] * (length - len(targets)))
            ids, targets = [], []
        ids += example.ids
        targets += [IGNORE] * example.prompt + example.ids[example.prompt:]
    if ids:
        inputs.append(ids + [pad_id] * (length - len(ids)))
        labels.append(targets + [IGNORE] * (length - len(targets)))
    return torch.tensor(inputs), torch.tensor(labels)


def lr_at(step: int, total: int, peak: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * peak``."""
    warm = max(1, int(total * warmup))
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainStats:
    steps: int
    seconds: float
    tokens: int  # ids processed (padding included)
    answer_tokens: int  # ids with a loss
    passes: float  # corpus passes
    final_loss: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _pools(examples: list[Encoded], length: int, long_length: int, pad_id: int, rng: random.Random):  # noqa: ANN202
    """Short examples packed into rows of ``length``, long ones (a scenario prefix) into rows of
    ``long_length``; and the share of steps that should take a long batch (by tokens)."""
    short = [e for e in examples if len(e.ids) <= length]
    long = [e for e in examples if length < len(e.ids) <= long_length]
    pools = [pack_rows(short, length, pad_id, rng)]
    share = 0.0
    if long:
        pools.append(pack_rows(long, long_length, pad_id, rng))
        share = sum(len(e.ids) for e in long) / sum(len(e.ids) for e in short + long)
    return pools, share


def train_tier(model, spec: TierSpec, examples: list[Encoded], length: int, long_length: int, pad_id: int, seed: int,
               on_step: Callable[[int, float], None] | None = None) -> TrainStats:  # noqa: ANN001
    """Train ``model`` in place for ``spec.steps`` steps of ``spec.batch_size`` packed rows
    (``length`` ids; a long batch of rows of ``long_length`` ids now and then)."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(f"pack/{seed}")
    optimiser = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    pools, long_share = _pools(examples, length, long_length, pad_id, rng)
    cursors = [0] * len(pools)
    sizes = [spec.batch_size, max(1, spec.batch_size * length // long_length)]
    passes, tokens, answer_tokens, loss_ema = 0, 0, 0, float("nan")
    started = time.perf_counter()
    for step in range(spec.steps):
        which = 1 if len(pools) > 1 and rng.random() < long_share else 0
        inputs, labels = pools[which]
        if cursors[which] + sizes[which] > len(inputs):
            pools, long_share = _pools(examples, length, long_length, pad_id, rng)
            cursors = [0] * len(pools)
            passes += 1
            inputs, labels = pools[which]
        batch = inputs[cursors[which] : cursors[which] + sizes[which]]
        target = labels[cursors[which] : cursors[which] + sizes[which]]
        cursors[which] += sizes[which]
        for group in optimiser.param_groups:
            group["lr"] = lr_at(step, spec.steps, spec.lr)
        loss = model(input_ids=batch, labels=target).loss  # right padding: causal attention never sees it
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        tokens += batch.numel()
        answer_tokens += int((target != IGNORE).sum())
        value = float(loss.detach())
        loss_ema = value if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * value
        if on_step is not None:
            on_step(step, loss_ema)
    model.eval()
    seconds = time.perf_counter() - started
    done = passes + cursors[0] / max(1, len(pools[0][0]))
    return TrainStats(spec.steps, round(seconds, 1), tokens, answer_tokens, round(done, 2), round(loss_ema, 4))
