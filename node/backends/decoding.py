"""The transformers backend's decoding loop: one forward pass per step over left-padded rows.

Each step reads the new tokens to the host once (the loop's only device-to-host sync); stopping
(stop token, length, deadline, abandonment) and phrase suppression are decided there from plain
Python lists, and streamed text comes from an incremental detokeniser, so step 1,000 costs what
step 10 does. Rows that finish leave the batch. The deadline is checked after every step, so a
generation ends within one forward pass of it on any device.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

FinishReason = Literal["stop", "length", "deadline"]


class TextDeltas:
    """Text deltas of a growing token list, decoding only the tokens since the last delta.

    A delta is held back while it ends in an incomplete multi-byte character; leading whitespace
    of the whole text is dropped (the final text is stripped too).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._prefix = 0  # tokens before this index are in ``emitted``; decoding from here keeps context
        self._read = 0  # tokens before this index have been turned into text
        self.emitted = ""

    def push(self, tokens: list[int]) -> str:
        """The new text after ``tokens`` grew (possibly empty)."""
        seen = self._decode(tokens[self._prefix : self._read])
        text = self._decode(tokens[self._prefix :])
        if len(text) <= len(seen) or text.endswith("\ufffd"):
            return ""
        delta = text[len(seen) :]
        self._prefix, self._read = self._read, len(tokens)
        if not self.emitted:
            delta = delta.lstrip()
        self.emitted += delta
        return delta

    def rest(self, final_text: str) -> str:
        """What ``final_text`` adds to the deltas emitted so far ("" if it does not extend them)."""
        return final_text[len(self.emitted) :] if final_text.startswith(self.emitted) else ""


@dataclass
class Row:
    """One query's state inside a batch. ``abandoned`` may be set from another thread."""

    prompt_ids: list[int]
    max_new: int
    deadline: float | None = None  # unix time
    text: TextDeltas | None = None  # set when the caller streams
    sink: Callable[[str], None] | None = None  # receives text deltas, in the decoding thread
    tokens: list[int] = field(default_factory=list)
    reason: FinishReason | None = None  # set when the row is done
    abandoned: bool = False

    def expired(self, now: float) -> bool:
        return self.abandoned or (self.deadline is not None and now >= self.deadline)

    def take(self, token: int, stop_ids: set[int], now: float) -> None:
        """Record one decoded token, or finish the row."""
        if self.expired(now):
            self.reason = "deadline"
            return
        if token in stop_ids:
            self.reason = "stop"
            return
        self.tokens.append(token)
        if self.text is not None and self.sink is not None and (delta := self.text.push(self.tokens)):
            self.sink(delta)
        if len(self.tokens) >= self.max_new:
            self.reason = "length"

    def tail(self, length: int) -> list[int]:
        """The last ``length`` tokens of prompt + output."""
        if len(self.tokens) >= length:
            return self.tokens[len(self.tokens) - length :]
        return self.prompt_ids[len(self.prompt_ids) - (length - len(self.tokens)) :] + self.tokens


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature`` is 0; otherwise temperature, top-k, top-p (transformers' order)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None

    def pick(self, scores: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return scores.argmax(-1)
        scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = scores.sort(-1)
            drop = ordered.softmax(-1).cumsum(-1) <= 1 - self.top_p
            drop[..., -1] = False  # keep at least the most likely token
            scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(scores.softmax(-1), 1).squeeze(1)


class PhraseBan:
    """Forbids token sequences: a phrase's last token is masked when the tokens before it were just produced."""

    def __init__(self, phrases: list[list[int]], device: torch.device) -> None:
        singles = sorted({p[0] for p in phrases if len(p) == 1})
        self._singles = torch.tensor(singles, device=device) if singles else None
        self._longer = [(p[:-1], p[-1]) for p in phrases if len(p) > 1]

    def apply(self, scores: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        if self._singles is not None:
            scores = scores.index_fill(-1, self._singles, float("-inf"))
        hits = [(i, last) for i, row in enumerate(rows) for before, last in self._longer if row.tail(len(before)) == before]
        if hits:  # rare: only right after a phrase's opening tokens
            index = torch.tensor(hits, device=scores.device)
            scores[index[:, 0], index[:, 1]] = float("-inf")
        return scores


def decode(model, rows: list[Row], *, pad_id: int, stop_ids: set[int], sampling: Sampling, ban: PhraseBan | None = None) -> None:  # noqa: ANN001
    """Decode every row until it stops, reaches its length, or passes its deadline (sets ``row.reason``)."""
    from transformers import DynamicCache

    now = time.time()
    for row in rows:
        if row.expired(now):
            row.reason = "deadline"
        elif row.max_new <= 0:
            row.reason = "length"
    active = [row for row in rows if row.reason is None]
    if not active:
        return
    device, width = model.device, max(len(row.prompt_ids) for row in active)
    ids = torch.tensor([[pad_id] * (width - len(r.prompt_ids)) + r.prompt_ids for r in active], device=device)
    mask = _Padding.of(active, width, device)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True, **mask.inputs(), **keep_logits(model, 1)).logits[:, -1]
    while True:
        scores = logits.float()
        if ban is not None:
            scores = ban.apply(scores, active)
        chosen = sampling.pick(scores)
        tokens = chosen.tolist()  # the step's one device-to-host sync: the device has finished the step
        now = time.time()
        for row, token in zip(active, tokens):
            row.take(token, stop_ids, now)
        keep = [i for i, row in enumerate(active) if row.reason is None]
        if not keep:
            return
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            chosen, active = chosen[index], [active[i] for i in keep]
            mask = mask.select(index, active, width)
        mask = mask.step()
        logits = model(input_ids=chosen[:, None], past_key_values=cache, use_cache=True, **mask.inputs()).logits[:, -1]


def keep_logits(model, positions: int) -> dict[str, int]:  # noqa: ANN001
    """Forward-pass options that compute logits for the last ``positions`` positions only, when the model can."""
    return {"logits_to_keep": positions} if getattr(model, "_supports_logits_to_keep", lambda: False)() else {}


@dataclass(frozen=True)
class _Padding:
    """Attention mask and positions of a left-padded batch; both None when no row is padded,
    so the model builds its plain causal mask (no mask tensor work per step)."""

    attention: torch.Tensor | None = None
    positions: torch.Tensor | None = None

    @classmethod
    def of(cls, rows: list[Row], width: int, device: torch.device) -> _Padding:
        if all(len(row.prompt_ids) == width for row in rows):
            return cls()
        attention = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in rows], device=device)
        return cls(attention, (attention.cumsum(-1) - 1).clamp(min=0))

    def inputs(self) -> dict[str, torch.Tensor]:
        return {} if self.attention is None else {"attention_mask": self.attention, "position_ids": self.positions}

    def select(self, index: torch.Tensor, rows: list[Row], width: int) -> _Padding:
        if self.attention is None or all(len(row.prompt_ids) == width for row in rows):
            return _Padding()
        return _Padding(self.attention[index], self.positions[index])

    def step(self) -> _Padding:
        if self.attention is None:
            return self
        ones = self.attention.new_ones(self.attention.shape[0], 1)
        return _Padding(torch.cat([self.attention, ones], dim=-1), self.positions[:, -1:] + 1)
