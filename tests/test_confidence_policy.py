"""The `confidence` policy: a base tier answers, scores its own answer (with the reply's end), and forwards
when 1 - P(answer | prompt) is above the calibrated threshold. Real committed family tiers (about 1 MB each)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import Mesh

from disrouter.mesh.protocol import Query
from disrouter.mesh.topology import load_topology
from disrouter.node.backends import Backend, load_backend
from disrouter.node.calibration import Calibration, CalibrationError
from disrouter.node.cli import build_parser
from disrouter.node.policies import AlwaysPolicy, ConfidencePolicy, Decision, make_policy
from disrouter.training.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
VAL = ROOT / "training" / "family" / "weights" / "data" / "sa-val.jsonl"
ALPHA, MAX_TOKENS = 0.5, 16


def queries(count: int = 6) -> list[Query]:
    return [Query(messages=task.prompt_messages(), scenario=ALPHA, max_tokens=MAX_TOKENS, temperature=0.0) for task in load_tasks(VAL)[:count]]


def policy(threshold: float, skip: float = 1.0) -> ConfidencePolicy:
    chosen = make_policy("confidence", Calibration(thresholds={ALPHA: threshold}, skip_thresholds={ALPHA: skip}))
    assert isinstance(chosen, ConfidencePolicy)
    return chosen


async def decide_all(backend: Backend, chosen: ConfidencePolicy) -> list[tuple[Decision, list[str]]]:
    results = []
    for query in queries():
        streamed: list[str] = []
        results.append((await chosen.decide(backend, query, streamed.append), streamed))
    return results


def doubt_by_hand(folder: Path, chat: list[dict[str, str]], answer: str) -> float:
    """1 - P(answer tokens, then the end-of-sequence token | prompt), from one plain forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True)["input_ids"])
    reply = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1].float(), -1)
    return 1.0 - math.exp(logprobs[torch.arange(len(reply)), torch.tensor(reply)].sum().item())


@pytest.fixture(scope="module")
def tier_s() -> Path:
    return ROOT / "training" / "family" / "weights" / "s"


async def test_threshold_one_always_answers_and_records_its_doubt_in_its_own_answer(tier_s: Path) -> None:
    backend = load_backend("transformers", str(tier_s))
    try:
        results = await decide_all(backend, policy(1.0))
        for (decision, streamed), query in zip(results, queries()):
            chat = [m.model_dump() for m in query.messages]  # the query's own chat: no scenario instruction
            with_end, _ = await backend.continuation_logprob(chat, decision.generation.text, end=True)
            without_end, _ = await backend.continuation_logprob(chat, decision.generation.text)
            assert decision.generation.text == (await AlwaysPolicy().decide(backend, query)).generation.text  # the answer a last tier gives
            assert not decision.reject and decision.name == "answer" and streamed == [decision.generation.text]
            assert decision.reject_prob == pytest.approx(1 - math.exp(with_end), abs=1e-9)
            assert decision.reject_prob == pytest.approx(doubt_by_hand(tier_s, chat, decision.generation.text), abs=1e-4)
            assert with_end < without_end  # the end of the reply is scored too
    finally:
        await backend.close()
    doubts = [decision.reject_prob for decision, _ in results]
    assert all(0.0 < d < 1.0 for d in doubts) and len(set(doubts)) == len(doubts)


async def test_threshold_zero_always_forwards_holding_the_text_and_answers_with_it_when_no_peer_takes_it(tier_s: Path) -> None:
    backend = load_backend("transformers", str(tier_s))
    try:
        answered = [decision for decision, _ in await decide_all(backend, policy(1.0))]
        rejected = await decide_all(backend, policy(0.0))
        skipped = await decide_all(backend, policy(0.0, skip=0.0))
        forced, streamed = rejected[0][0], []
        kept = await policy(0.0).answer(backend, queries()[0], streamed.append, rejected=forced)
    finally:
        await backend.close()
    assert all(d.reject and not d.skip and d.name == "reject" and text == [] for d, text in rejected)
    assert [d.generation.text for d, _ in rejected] == [d.generation.text for d in answered]  # the same answer, withheld
    assert [d.reject_prob for d, _ in rejected] == pytest.approx([d.reject_prob for d in answered], abs=1e-9)
    assert all(d.reject and d.skip for d, _ in skipped)
    assert kept.forced and not kept.reject and kept.generation == forced.generation and streamed == [forced.generation.text]
    assert kept.reject_prob == forced.reject_prob


async def test_a_mesh_forwards_from_a_doubting_tier_and_the_hop_records_the_doubt(mesh: Mesh, tier_s: Path) -> None:
    backend = load_backend("transformers", str(tier_s))
    expected = [decision for decision, _ in await decide_all(backend, policy(1.0))]
    await mesh.add("family-s", 0.13, "family-s", entry=True, policy="confidence", backend=backend,
                   calibration=Calibration(thresholds={ALPHA: 0.0}, skip_thresholds={ALPHA: 1.0}, policy="confidence"))
    await mesh.add("family-l", 0.9, "family-l", policy="always", backend=load_backend("transformers", "family-l"))
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answers = [await client.ask(q.messages, scenario=ALPHA, max_tokens=MAX_TOKENS, temperature=0.0, timeout=60) for q in queries()]

    assert [[(h.model, h.decision) for h in a.path] for a in answers] == [[("family-s", "reject"), ("family-l", "answer")]] * len(answers)
    assert [a.path[0].reject_prob for a in answers] == pytest.approx([d.reject_prob for d in expected], abs=1e-6)
    # the rejecting hop paid for its generation and for scoring it (one prefill of the prompt and the answer)
    assert [(h.prompt_tokens, h.completion_tokens) for h in (a.path[0] for a in answers)] == [
        (2 * d.generation.prompt_tokens + d.generation.completion_tokens, d.generation.completion_tokens) for d in expected]


def test_the_node_cli_and_topologies_accept_the_policy(tmp_path: Path) -> None:
    assert build_parser().parse_args(["--model", "family-s", "--policy", "confidence"]).policy == "confidence"
    topology = tmp_path / "topology.yaml"
    topology.write_text("models:\n  - {key: s, model: family-s, cost: 0.13, policy: confidence}\n  - {key: l, model: family-l, cost: 0.9}\n")
    assert load_topology(topology).models[0].policy == "confidence"
    with pytest.raises(ValueError, match="unknown policy 'confident'; choose from generate, probe, confidence, always"):
        make_policy("confident")


async def test_a_node_refuses_a_calibration_made_for_the_other_thresholded_policy(mesh: Mesh) -> None:
    made_for_confidence = Calibration(thresholds={ALPHA: 0.3}, policy="confidence")
    with pytest.raises(CalibrationError, match="on the confidence policy's score, not probe's"):
        await mesh.add("s", 0.1, "paris", entry=True, policy="probe", calibration=made_for_confidence)
    with pytest.raises(CalibrationError, match="on the probe policy's score, not confidence's"):
        await mesh.add("s", 0.1, "paris", entry=True, policy="confidence", calibration=Calibration(policy="probe"))
    # generate reads only the demonstrations; a file from before the field (policy None) serves either policy
    assert (await mesh.add("g", 0.2, "paris", policy="generate", calibration=made_for_confidence)).policy.name == "generate"


async def node_error(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(str(Path(sys.executable).parent / "disrouter-node"), *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


async def test_the_node_cli_refuses_a_confidence_calibration_under_probe_in_one_line(tmp_path: Path) -> None:
    calibration = tmp_path / "family-s.json"
    calibration.write_text(json.dumps({"thresholds": {"0.5": 0.3}, "skip_thresholds": {"0.5": 1.0}, "policy": "confidence"}))
    args = ["--model", "family-s", "--cost", "0.13", "--calibration", str(calibration), "--nats", "nats://127.0.0.1:1"]

    code, err = await node_error(*args, "--policy", "probe")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "the calibration's thresholds are on the confidence policy's score, not probe's" in err

    code, err = await node_error(*args, "--policy", "confidence")  # the matching policy takes the file and goes on to connect
    assert code != 0 and len(err.strip().splitlines()) == 1 and "cannot reach NATS" in err, err
