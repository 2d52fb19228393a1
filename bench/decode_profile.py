"""Per-token decoding time of the transformers backend against a bare forward loop of the same model.

    python -m disrouter.bench.decode_profile [--model tiny|smollm2-135m|FOLDER] [--device cpu|cuda]
                                             [--tokens 200] [--profile torch|python] [--json PATH]

A one-layer model (``tiny``, random weights, SmolLM2's tokenizer) makes per-step overhead visible:
its forward pass costs almost nothing, so whatever the backend adds per token is what remains.
Per-token times are differences (N tokens minus a few tokens, divided by the extra tokens), so
prefill, tokenisation and the batching window drop out of both sides; variants are measured
interleaved and the fastest of several runs counts, which keeps the ratios steady on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import torch

from disrouter.node.backends import GenerationRequest
from disrouter.node.backends.sources import local_folder, resolve
from disrouter.node.backends.transformers import TransformersBackend
from disrouter.node.prompts import REJECT_PHRASE, reject_variants, with_scenario

CHAT = [{"role": "user", "content": "Write a long story about a lighthouse."}]
SHORT = 8  # tokens of the short run whose time is subtracted


def load(model: str, device: str) -> TransformersBackend:
    """The backend on ``model``: "tiny" builds a random one-layer Llama that never emits a stop token."""
    if model != "tiny":
        return TransformersBackend.load(resolve(model), device=device, concurrency=1)
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(local_folder(resolve("smollm2-135m")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model_ = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # logit 0 for special tokens: among 49k random logits one always beats it
        model_.lm_head.weight[tokenizer.all_special_ids] = 0.0
    return TransformersBackend(model_.to(device), tokenizer, "tiny", concurrency=1)


def bare_seconds(backend: TransformersBackend, tokens: int) -> float:
    """Seconds for ``tokens`` greedy steps of a plain forward loop (KV cache, argmax on the device)."""
    model = backend._model
    ids = torch.tensor([backend._prompt_ids(CHAT)], device=model.device)
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        token.cpu()
        started = time.perf_counter()
        for _ in range(tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        token.cpu()
    return time.perf_counter() - started


async def backend_seconds(backend: TransformersBackend, tokens: int, suppress: bool, stream: bool) -> float:
    request = GenerationRequest(messages=CHAT, max_tokens=tokens, suppress=tuple(reject_variants()) if suppress else ())
    pieces: list[str] = []
    started = time.perf_counter()
    generation = await backend.generate(request, pieces.append if stream else None)
    elapsed = time.perf_counter() - started
    if generation.completion_tokens != tokens:
        raise RuntimeError(f"the model stopped after {generation.completion_tokens} of {tokens} tokens")
    return elapsed


VARIANTS = {"plain": (False, False), "suppress": (True, False), "suppress_stream": (True, True)}  # (suppress, stream)


async def probe_seconds(backend: TransformersBackend) -> float:
    """Seconds for one probe (P(reject phrase | scenario prompt)), its prompt prefix already cached."""
    chat = with_scenario(CHAT, alpha=0.5)
    await backend.continuation_logprob(chat, REJECT_PHRASE)  # the prefix's KV cache is filled once
    started = time.perf_counter()
    await backend.continuation_logprob(chat, REJECT_PHRASE)
    return time.perf_counter() - started


def figures(backend: TransformersBackend, tokens: int, repeats: int) -> dict[str, Any]:
    """Per-token ms of the bare loop and of each backend variant, measured interleaved; the
    fastest of ``repeats`` runs counts (other processes only ever add time)."""
    loop = asyncio.new_event_loop()
    measures = {"bare_forward": lambda n: bare_seconds(backend, n)}
    for name, (suppress, stream) in VARIANTS.items():
        measures[f"backend_{name}"] = lambda n, s=suppress, t=stream: loop.run_until_complete(backend_seconds(backend, n, s, t))
    try:
        measures["backend_plain"](SHORT)  # warm up
        best = {(name, n): float("inf") for name in measures for n in (SHORT, tokens)}
        for _ in range(repeats):
            for name, measure in measures.items():
                for n in (SHORT, tokens):
                    best[name, n] = min(best[name, n], measure(n))
        ms = {name: (best[name, tokens] - best[name, SHORT]) / (tokens - SHORT) * 1000 for name in measures}
        result: dict[str, Any] = {f"{name}_ms_per_token": round(value, 3) for name, value in ms.items()}
        result |= {f"backend_{name}_vs_bare": round(ms[f"backend_{name}"] / ms["bare_forward"], 2) for name in VARIANTS}
        result["probe_ms"] = round(min(loop.run_until_complete(probe_seconds(backend)) for _ in range(repeats)) * 1000, 2)
        return result
    finally:
        loop.run_until_complete(backend.close())
        loop.close()


class _InlineExecutor(Executor):
    """Runs submitted work at once in the calling thread, so profilers see the decoding loop."""

    def submit(self, fn, /, *args, **kwargs) -> Future:  # noqa: ANN001
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            future.set_exception(exc)
        return future


HOST_CALLS = {"torch_tensor": "<built-in method torch.tensor>",  # a host-to-device copy when the model is on a GPU
              "tolist": "<method 'tolist' of 'torch._C.TensorBase' objects>",  # a device-to-host sync on a GPU
              "item": "<method 'item' of 'torch._C.TensorBase' objects>",
              "cpu": "<method 'cpu' of 'torch._C.TensorBase' objects>"}


def _calls(stats, name: str) -> int:  # noqa: ANN001
    return sum(entry[1] for key, entry in stats.stats.items() if key[2] == name)


def counts(backend: TransformersBackend, tokens: int) -> dict[str, Any]:
    """Per decoded token: torch operator calls and the host calls that synchronise or copy on a GPU.

    Counts are exact on any machine, so they compare the decoding loop with a bare loop (and before
    with after) without timing noise; on a GPU each counted sync stalls the host until the device
    catches up.
    """
    import cProfile
    import pstats

    from torch.profiler import profile as torch_profile

    backend._pool = _InlineExecutor()  # profilers only see the thread they run in
    loop = asyncio.new_event_loop()
    runs = {"bare_forward": lambda n: bare_seconds(backend, n)}
    for name, (suppress, stream) in VARIANTS.items():
        runs[f"backend_{name}"] = lambda n, s=suppress, t=stream: loop.run_until_complete(backend_seconds(backend, n, s, t))
    runs["backend_plain"](SHORT)  # warm up
    result: dict[str, Any] = {}
    for name, run in runs.items():
        per_run = {}
        for n in (SHORT, tokens):
            profiler = cProfile.Profile()
            with torch_profile() as ops:
                profiler.enable()
                run(n)
                profiler.disable()
            stats = pstats.Stats(profiler)
            events = ops.key_averages()
            per_run[n] = {"torch_ops": sum(event.count for event in events),  # each one a kernel launch or more on a GPU
                          "scalar_reads": sum(e.count for e in events if e.key == "aten::_local_scalar_dense")}  # bool()/item(): a sync
            per_run[n] |= {key: _calls(stats, label) for key, label in HOST_CALLS.items()}
        result[name] = {key: round((per_run[tokens][key] - per_run[SHORT][key]) / (tokens - SHORT), 2) for key in per_run[tokens]}
    loop.run_until_complete(backend.close())
    loop.close()
    return result


def profile(backend: TransformersBackend, tokens: int, kind: str) -> None:
    """Print where one streamed, suppressed generation of ``tokens`` spends its time."""
    backend._pool = _InlineExecutor()
    loop = asyncio.new_event_loop()
    run = lambda: loop.run_until_complete(backend_seconds(backend, tokens, True, True))  # noqa: E731
    run()  # warm up
    if kind == "python":
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if backend._model.device.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            seconds = run()
        print(f"{tokens} tokens in {seconds * 1000:.1f} ms")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    loop.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", choices=("torch", "python"), help="print a profile instead of figures")
    parser.add_argument("--counts", action="store_true", help="also count operators and host syncs per token")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    backend = load(args.model, args.device)
    if args.profile:
        profile(backend, args.tokens, args.profile)
        return 0
    result = {"model": args.model, "device": args.device, "tokens": args.tokens, **figures(backend, args.tokens, args.repeats)}
    if args.counts:
        result["per_token_counts"] = counts(load(args.model, args.device), args.tokens)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
