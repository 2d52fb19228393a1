"""Deadlines inside generation: a long or hanging generation ends at the query's deadline.

The transformers backend runs on the device named by DISROUTER_TEST_DEVICE (default: CUDA when
available, as the node picks), so a GPU run checks the same. A slow device is simulated with SlowForward
(tests/scripted_model.py), which delays or holds the scripted model's forward passes.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import nats
import pytest
from conftest import Mesh
from scripted_model import SlowForward

from disrouter.mesh.protocol import Query, decode_reply, encode
from disrouter.node.backends import GenerationRequest
from disrouter.node.backends.decoding import TextDeltas
from disrouter.node.backends.sources import resolve
from disrouter.node.backends.transformers import TransformersBackend

DEVICE = os.environ.get("DISROUTER_TEST_DEVICE") or None  # None: the backend's default, CUDA when there is one
TALK = [{"role": "user", "content": "talk forever"}]


@pytest.fixture
async def babbler(scripted_models: dict[str, Path]):  # noqa: ANN201
    """The scripted model that never stops, one generation at a time (so a batch's end is observable)."""
    backend = TransformersBackend.load(resolve(str(scripted_models["babble"])), device=DEVICE, concurrency=1)
    yield backend
    await backend.close()


def ask(max_tokens: int, within: float | None = None) -> GenerationRequest:
    return GenerationRequest(messages=TALK, max_tokens=max_tokens, deadline=None if within is None else time.time() + within)


async def test_a_deadline_stops_decoding_at_the_next_step(babbler: TransformersBackend) -> None:
    slow = SlowForward(babbler._model, seconds=0.02)  # 5,000 tokens would take 100 s
    try:
        cut = await babbler.generate(ask(5000, within=1.0))
        after = await babbler.generate(ask(2))  # one slot: runs once the cut batch has really ended
    finally:
        slow.remove()

    assert cut.finish_reason == "deadline" and 0 < cut.completion_tokens < 500
    assert after.finish_reason == "length"
    assert slow.calls <= (cut.completion_tokens + 2) + 2  # the cut batch stopped decoding, not just answering


async def test_the_answer_comes_at_the_deadline_while_a_forward_pass_hangs(babbler: TransformersBackend) -> None:
    slow = SlowForward(babbler._model, hold_at=3)
    try:
        cut = await babbler.generate(ask(100, within=2.0))
        still_hanging = slow.hanging()
        slow.release.set()
        after = await babbler.generate(ask(2))
    finally:
        slow.remove()

    assert cut.finish_reason == "deadline" and still_hanging
    assert after.finish_reason == "length" and after.completion_tokens == 2
    assert slow.calls == 3 + 2  # the hung row left as soon as its pass returned: no 4th pass for it


async def test_other_rows_of_the_batch_keep_decoding(babbler: TransformersBackend) -> None:
    slow = SlowForward(babbler._model, seconds=0.01)
    babbler._window = 0.5  # a wide batching window: both queries surely share the batch
    try:
        cut, full = await asyncio.gather(babbler.generate(ask(2000, within=0.5)), babbler.generate(ask(40)))
    finally:
        slow.remove()

    assert babbler.batches_run == 1, "the two queries should have shared one batch"
    assert cut.finish_reason == "deadline" and cut.completion_tokens < 2000
    assert full.finish_reason == "length" and full.completion_tokens == 40


async def test_a_deadline_that_passes_in_the_queue_is_answered_without_waiting(babbler: TransformersBackend) -> None:
    slow = SlowForward(babbler._model, hold_at=2)
    try:
        first = asyncio.create_task(babbler.generate(ask(5)))
        await asyncio.to_thread(slow.held.wait, 30)
        queued = await babbler.generate(ask(5, within=0.3))
        first_was_running = not first.done()
        slow.release.set()
        done = await first
    finally:
        slow.remove()

    assert first_was_running and queued.finish_reason == "deadline" and queued.completion_tokens == 0
    assert done.finish_reason == "length" and done.completion_tokens == 5
    assert slow.calls == 5  # prefill + 4 steps of the first query; the expired one never ran


async def test_the_node_answers_deadline_exceeded_while_its_model_hangs_and_serves_others(mesh: Mesh) -> None:
    node = await mesh.add("only", 0.1, "babble", entry=True, policy="always")
    slow = SlowForward(node.backend._model, hold_at=2)
    nc = await nats.connect(mesh.url)
    try:
        query = Query(messages=TALK, max_tokens=8000, deadline=time.time() + 3.0)
        reply = decode_reply((await nc.request(f"{mesh.prefix}.ingress", encode(query), timeout=30)).data)
        still_hanging = slow.hanging()
        other = Query(messages=TALK, max_tokens=3, deadline=time.time() + 30)
        answer = decode_reply((await nc.request(f"{mesh.prefix}.ingress", encode(other), timeout=30)).data)
    finally:
        slow.remove()
        await nc.close()

    assert reply.error.code.value == "deadline_exceeded" and still_hanging
    assert answer.completion_tokens == 3  # the node's other slot kept serving


def test_streamed_text_decodes_a_short_window_per_token_and_matches_the_whole(smollm2_folder: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    text = ("Déjà vu 🦙🦙 — naïve café, 東京 and 42 more words. " * 40).strip()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    widths: list[int] = []

    def decode(tokens: list[int]) -> str:
        widths.append(len(tokens))
        return tokenizer.decode(tokens, skip_special_tokens=True)

    deltas, tokens, pieces = TextDeltas(decode), [], []
    for token in ids:
        tokens.append(token)
        pieces.append(deltas.push(tokens))

    whole = tokenizer.decode(ids, skip_special_tokens=True)
    assert "".join(pieces) + deltas.rest(whole.strip()) == whole.strip()
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(ids) > 500 and max(widths) <= 8  # no step re-decodes the text so far


async def test_closing_the_backend_stops_a_long_generation_at_the_next_step(babbler: TransformersBackend) -> None:
    slow = SlowForward(babbler._model, seconds=0.02)  # 5,000 tokens would take 100 s
    try:
        running = asyncio.create_task(babbler.generate(ask(5000)))
        await asyncio.sleep(0.5)
        await babbler.close()
        cut = await running
    finally:
        slow.remove()

    assert cut.finish_reason == "deadline" and 0 < cut.completion_tokens < 500
