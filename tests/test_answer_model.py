"""`--answer-model`: the self-aware weights decide (probe P(reject)), the base weights write the answer.

Real committed family tiers (about 1 MB each): the SFT+RL checkpoint of tier m decides, the base tier m answers.
"""

from __future__ import annotations

import asyncio
import math
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import Mesh
from rich.progress import Progress

from disrouter.bench.quality.live import write_topology
from disrouter.bench.quality.preset import load_preset
from disrouter.mesh.client import MeshClient
from disrouter.mesh.connection import connect
from disrouter.mesh.membership import NodeCard, list_cards, open_registry
from disrouter.mesh.subjects import Subjects
from disrouter.mesh.topology import load_topology
from disrouter.node.backends import GenerationRequest, load_backend
from disrouter.node.backends.sources import resolve
from disrouter.node.calibration import load_calibration
from disrouter.node.compose import ConfigError, build_node
from disrouter.node.prompts import REJECT_PHRASE, reject_variants, with_scenario
from disrouter.topologies import topology_path
from disrouter.training.graders import grade
from disrouter.training.mesh_measure import measure_tier
from disrouter.training.mesh_run import load_mesh_config
from disrouter.training.tasks import load_tasks

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VAL = ROOT / "training" / "family" / "weights" / "data" / "sa-val.jsonl"
ALPHA, MAX_TOKENS, QUESTIONS = 0.8, 16, slice(8, 24)  # m's committed threshold at 0.8 is 1: it answers every query


def questions() -> list[list[dict[str, str]]]:
    return [task.prompt_messages() for task in load_tasks(VAL)[QUESTIONS]]


async def own_answers(model: str, chats: list[list[dict[str, str]]]) -> tuple[list[str], list[float]]:
    """``model``'s own greedy answers as the probe policy asks them, and its P(reject) on each prompt."""
    backend = load_backend("transformers", model)
    try:
        texts, probs = [], []
        for chat in chats:
            scenario = with_scenario(chat, ALPHA, demonstrations=False)
            generation = await backend.generate(GenerationRequest(scenario, MAX_TOKENS, suppress=tuple(reject_variants())))
            logprob, _ = await backend.continuation_logprob(scenario, REJECT_PHRASE)
            texts.append(generation.text)
            probs.append(math.exp(logprob))
        return texts, probs
    finally:
        await backend.close()


async def test_the_base_model_answers_while_the_self_aware_model_decides(mesh: Mesh) -> None:
    chats = questions()
    base_texts, _ = await own_answers("family-m", chats)
    trained_texts, trained_probs = await own_answers("family-m-sftrl", chats)
    assert base_texts != trained_texts  # the two weights answer differently, so the test can tell them apart

    decider = load_backend("transformers", "family-m-sftrl")
    answerer = load_backend("transformers", "family-m")
    calibration = load_calibration(None, resolve("family-m-sftrl").folder)
    node = await mesh.add("family-m", 0.348, "family-m-sftrl", entry=True, policy="probe", calibration=calibration,
                          backend=decider, answer_backend=answerer)
    await mesh.add("family-l", 0.9, "family-l", policy="always", backend=load_backend("transformers", "family-l"))  # m is not the last tier
    await mesh.all_see({n.card.node_id for n in mesh.nodes})
    client = await mesh.client()

    answers = [await client.ask(chat, scenario=ALPHA, max_tokens=MAX_TOKENS, temperature=0.0, timeout=60) for chat in chats]

    assert [a.text for a in answers] == base_texts
    assert [a.path[0].decision for a in answers] == ["answer"] * len(chats)
    assert [a.path[0].reject_prob for a in answers] == pytest.approx(trained_probs, rel=1e-3, abs=1e-12)
    assert node.card.answer_model == "family-m"


async def test_an_answer_model_is_refused_for_any_policy_but_probe(nats_url: str) -> None:
    nc = await connect(nats_url, name="answer-model-refusal")
    try:
        for policy in ("generate", "always"):
            card = NodeCard(node_id=f"m-{policy}", model_key="family-m", model="family-m-sftrl", cost=0.348, policy=policy)
            with pytest.raises(ConfigError, match=f"--answer-model needs --policy probe, not {policy}"):
                await build_node(nc, card, load_backend("transformers", "family-m-sftrl"), Subjects(f"t{uuid.uuid4().hex[:8]}"),
                                 answer_backend=load_backend("transformers", "family-m"))
    finally:
        await nc.close()


async def run_node(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(str(BIN / "disrouter-node"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, err.decode()


async def test_the_cli_flag_refuses_the_generate_policy_in_one_line() -> None:
    code, err = await run_node("--model", "family-m-sftrl", "--cost", "0.3", "--answer-model", "family-m", "--nats", "nats://127.0.0.1:1")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--answer-model needs --policy probe, not generate" in err

    code, err = await run_node("--model", "family-m-sftrl", "--cost", "0.3", "--policy", "probe", "--answer-model", "family-zz")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "family-zz" in err


async def test_a_topology_entry_with_answer_model_serves_the_base_answer_and_shows_it_on_the_card(mesh: Mesh, tmp_path: Path) -> None:
    nats_url, prefix = mesh.url, mesh.prefix
    await mesh.add("family-l", 0.9, "family-l", policy="always", backend=load_backend("transformers", "family-l"))  # m is not the last tier
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump({"prefix": prefix, "models": [
        {"key": "family-m", "model": "family-m-sftrl", "cost": 0.348, "policy": "probe", "answer_model": "family-m"}]}))
    chats = questions()[9:11]  # val 17 and 18: the trained m (re-tuned checkpoints) answers the first differently
    base_texts, _ = await own_answers("family-m", chats)
    assert base_texts != (await own_answers("family-m-sftrl", chats))[0]
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--model", "family-m", "--topology", str(topology), "--nats", nats_url, "--node-id", "m-cli",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    nc = await connect(nats_url, name="answer-model-cli")
    client = await MeshClient.connect(nats_url, prefix)
    try:
        kv = await open_registry(nc, Subjects(prefix))
        for _ in range(600):
            cards = [c for c in await list_cards(kv) if c.node_id == "m-cli"]
            if cards or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert cards, "the node did not register"
        assert cards[0].answer_model == "family-m" and cards[0].model == "family-m-sftrl"
        await mesh.all_see({"m-cli"})
        answers = [await client.ask(chat, scenario=ALPHA, max_tokens=MAX_TOKENS, temperature=0.0, timeout=60) for chat in chats]
        assert [a.text for a in answers] == base_texts
        assert [[(h.node_id, h.decision) for h in a.path] for a in answers] == [[("m-cli", "answer")]] * len(chats)
    finally:
        await client.close()
        await nc.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


def test_the_demo_and_the_benchmarks_trained_probe_arms_answer_with_the_base_tiers(tmp_path: Path) -> None:
    demo = {e.key: e for e in load_topology(topology_path("demo")).models}
    assert {k: (e.model, e.answer_model) for k, e in demo.items()} == {
        "family-s": ("family-s-sftrl", "family-s"), "family-m": ("family-m-sftrl", "family-m"), "family-l": ("family-l", None)}
    bench = {t.key: t for t in load_preset("full").tiers}
    assert {k: t.answer_model and t.answer_model.name for k, t in bench.items()} == {"family-s": "s", "family-m": "m", "family-l": None}
    assert bench["family-m"].answers_with("sftrl", "probe") == bench["family-m"].model
    assert bench["family-m"].answers_with("sftrl", "generate") is None and bench["family-m"].answers_with("untrained", "probe") is None
    preset = load_preset("full")
    preset.fill_costs()
    for arm, policy, answers in (("sftrl", "probe", ["s", "m", None]), ("sft", "probe", ["s", "m", None]),
                                 ("sftrl", "generate", [None] * 3), ("untrained", "probe", [None] * 3)):
        written = load_topology(write_topology(preset, arm, policy, "q", tmp_path / f"{arm}-{policy}.yaml")).cascade()
        assert [e.answer_model and Path(e.answer_model).name for e in written] == answers


async def test_the_mesh_calibration_measures_the_split_node_it_serves(tmp_path: Path) -> None:
    tasks = load_tasks(VAL)[QUESTIONS]
    base_texts, _ = await own_answers("family-m", [t.prompt_messages() for t in tasks])
    trained_texts, trained_probs = await own_answers("family-m-sftrl", [t.prompt_messages() for t in tasks])
    base_right, trained_right = [grade(t, x) for t, x in zip(tasks, base_texts)], [grade(t, x) for t, x in zip(tasks, trained_texts)]
    assert base_right != trained_right
    weights = ROOT / "training" / "family"
    config = tmp_path / "mesh.yaml"
    config.write_text(yaml.safe_dump({"val": str(VAL), "out": str(tmp_path / "out"), "alphas": [ALPHA], "tiers": [
        {"key": "m", "cost": 0.3, "checkpoints": {"sftrl": str(weights / "self-aware" / "m" / "sftrl")}, "answer_model": str(weights / "weights" / "m")},
        {"key": "l", "cost": 0.9, "model": str(weights / "weights" / "l")}]}))
    tier = load_mesh_config(config).tiers[0]

    with Progress(disable=True) as bar:
        outcomes = await measure_tier(tier.checkpoints["sftrl"], tasks, [ALPHA], strongest=False, demonstrations=False, max_tokens=MAX_TOKENS,
                                      in_flight=1, backend="transformers", progress=bar, job=bar.add_task("m"), answer_folder=tier.answer_model)

    assert [outcomes[ALPHA][t.id].correct for t in tasks] == base_right
    assert [outcomes[ALPHA][t.id].p_reject for t in tasks] == pytest.approx(trained_probs, rel=1e-3, abs=1e-12)
