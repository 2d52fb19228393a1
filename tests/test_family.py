"""The model family: world generator (determinism, disjoint splits, exposure hidden from the
question), and the whole code path world -> corpus -> train -> save -> load -> generate,
run through the real CLI on the smoke-size config."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from disrouter.training.family.model import TierSpec, flops_per_token, tier_costs
from disrouter.training.family.questions import (
    HELD_OUT, PHRASINGS, corpus_examples, ood_tasks, sa_tasks, sum_key, trained_phrasings,
)
from disrouter.training.family.world import PERSON_RELATIONS, TWO_HOP, build_world
from disrouter.training.splits import split_of

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "training" / "configs" / "family-smoke.yaml"
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
ADDITIONS = {1: 200, 2: 400, 3: 400, 4: 200, 5: 200}


def _world_data(seed: int = 0):
    world = build_world(seed, people=80)
    sa = sa_tasks(world, {d: 30 for d in range(1, 6)}, seed, FRACTIONS)
    ood = ood_tasks(world, 40, seed, sa)
    held = {sum_key(t.question) for t in sa + ood if t.meta["family"] in ("add", "add_phrasing")}
    return world, sa, ood, corpus_examples(world, ADDITIONS, seed, held)


def test_world_is_deterministic_by_seed() -> None:
    first, second, other = build_world(3, people=50), build_world(3, people=50), build_world(4, people=50)
    assert first.attributes == second.attributes and first.facts == second.facts
    assert first.people != other.people
    _, sa1, ood1, corpus1 = _world_data(1)
    _, sa2, ood2, corpus2 = _world_data(1)
    assert sa1 == sa2 and ood1 == ood2 and corpus1 == corpus2


def test_two_hop_facts_compose_one_hop_facts() -> None:
    world = build_world(0, people=40)
    for person, values in world.attributes.items():
        assert values[TWO_HOP] == world.cities[values["city"]]
    assert len(set(world.people)) == len(world.people)


def test_splits_are_disjoint_and_match_the_pipeline_split() -> None:
    _, sa, ood, corpus = _world_data()
    for task in sa:
        assert task.meta["split"] == split_of(task.id, FRACTIONS, 0)
    assert {t.meta["split"] for t in sa} == {"train", "val", "test"}
    sa_questions = {t.question for t in sa}
    assert len(sa_questions) == len(sa)  # one query per fact: a fact is in one split only
    assert not sa_questions & {t.question for t in ood}
    adds = [sum_key(t.question) for t in sa + ood if t.meta["family"] in ("add", "add_phrasing")]
    assert len(adds) == len(set(adds))
    assert {t.meta["family"] for t in sa} == {"fact", "add"}
    assert {t.meta["family"] for t in ood} == {"two_hop", "phrasing", "add_phrasing"}
    corpus_questions = {r.question for r in corpus}
    held_out_templates = [PHRASINGS[r][HELD_OUT].split("{")[0] for r in PHRASINGS]
    assert not any(q.startswith(prefix) for q in corpus_questions for prefix in held_out_templates if prefix)
    corpus_sums = {sum_key(r.question) for r in corpus if r.family == "add" and r.level > 1}
    evaluated = {sum_key(t.question) for t in sa + ood if t.meta["family"] in ("add", "add_phrasing") and t.difficulty > 1}
    assert evaluated and not corpus_sums & evaluated


def _spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def test_exposure_is_not_readable_from_the_question() -> None:
    world = build_world(0, people=300)
    facts = [f for f in world.facts if f.relation in PERSON_RELATIONS]
    exposure = [float(f.exposure) for f in facts]
    assert len(set(exposure)) > 5  # a real spread to hide
    surfaces = {
        "name length": [float(len(f.subject)) for f in facts],
        "name order": [float(sorted(world.people).index(f.subject)) for f in facts],
        "generation order": [float(world.people.index(f.subject)) for f in facts],
        "first letter": [float(ord(f.subject[0])) for f in facts],
    }
    for surface, values in surfaces.items():
        assert abs(_spearman(values, exposure)) < 0.1, surface
    # the question is a trained template filled with the name and nothing else (no count, no id)
    sa = sa_tasks(world, {1: 1}, 0, FRACTIONS)
    for task in (t for t in sa if t.meta["family"] == "fact"):
        subject = next(n for n in world.people if n in task.question)
        assert task.question in {p.format(s=subject) for p in trained_phrasings(task.meta["relation"])}


def test_costs_are_proportional_to_compute() -> None:
    small = TierSpec("s", 64, 2, 4, 176, 1, 1e-3)
    large = TierSpec("l", 128, 6, 4, 352, 1, 1e-3)
    costs = tier_costs([small, large], 1024)
    assert costs["l"] == 0.9
    assert costs["s"] == pytest.approx(0.9 * flops_per_token(small, 1024) / flops_per_token(large, 1024), abs=1e-3)


def test_batched_encoding_equals_the_chat_template() -> None:
    from disrouter.training.family.tokenizer import chat_ids, train_tokenizer
    from disrouter.training.family.train import encode_examples

    _, _, _, corpus = _world_data()
    tokenizer = train_tokenizer([f"{r.question} {r.answer}" for r in corpus], 400)
    encoded = encode_examples(tokenizer, corpus[:50], 0.0, 0)
    for row, example in zip(corpus[:50], encoded):
        ids, prompt = chat_ids(tokenizer, [{"role": "user", "content": row.question}], row.answer)
        assert (example.ids, example.prompt) == (ids, prompt)
    assert tokenizer.decode(tokenizer("I don't know!")["input_ids"]) == "I don't know!"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "disrouter.cli.main", "train", "family", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke_family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("family")
    config = yaml.safe_load(SMOKE.read_text()) | {"commit_to": str(folder / "committed")}
    path = folder / "family-smoke.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _run_cli("--config", str(path), "--out", str(folder / "run"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report:" in result.stdout
    return folder


def test_smoke_family_trains_saves_and_reports(smoke_family: Path) -> None:
    run = smoke_family / "run"
    for name in ("s", "m", "l"):
        tier = run / "tiers" / name
        assert (tier / "model.safetensors").is_file() and (tier / "tokenizer.json").is_file()
        info = json.loads((tier / "tier.json").read_text())
        assert info["training"]["steps"] == 3 and info["training"]["tokens"] > 0
    report = json.loads((run / "report.json").read_text())
    assert list(report["tiers"]) == ["s", "m", "l"]
    costs = [report["tiers"][n]["cost"] for n in ("s", "m", "l")]
    assert costs == sorted(costs) and costs[-1] == 0.9
    for tier in report["tiers"].values():
        assert {"in_domain", "ood"} <= set(tier["accuracy"])
        assert 0.0 <= tier["accuracy"]["in_domain"]["all"]["greedy"] <= 1.0
    assert (run / "report.md").read_text().startswith("# Model family")
    assert (run / "accuracy.png").stat().st_size > 1000
    for split in ("sa-train", "sa-val", "sa-test", "ood", "corpus"):
        assert (run / "data" / f"{split}.jsonl").stat().st_size > 0


def test_committed_family_has_checksums_and_a_topology(smoke_family: Path) -> None:
    from disrouter.mesh.topology import load_topology

    committed = smoke_family / "committed"
    lines = (committed / "SHA256SUMS").read_text().split("\n")
    listed = dict(reversed(line.split("  ", 1)) for line in lines if line)
    assert {"s/model.safetensors", "report.json", "family.yaml", "command.txt", "data/sa.jsonl", "data/ood.jsonl"} <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((committed / name).read_bytes()).hexdigest() == digest
    topology = load_topology(committed / "topology.yaml")
    assert [m.key for m in topology.cascade()] == ["family-s", "family-m", "family-l"]


def test_a_tier_answers_through_the_node_backend_and_prompts(smoke_family: Path) -> None:
    """The transformers backend serves a tier unchanged, with the node's scenario system prompt."""
    from disrouter.node.backends import GenerationRequest, load_backend
    from disrouter.node.prompts import with_scenario

    async def ask() -> list:
        backend = load_backend("transformers", str(smoke_family / "run" / "tiers" / "l"))
        try:
            plain = GenerationRequest(messages=[{"role": "user", "content": "What is 2 + 3?"}], max_tokens=4)
            scenario = GenerationRequest(messages=with_scenario([{"role": "user", "content": "What is 2 + 3?"}], 0.5), max_tokens=4)
            results = [await backend.generate(plain), await backend.generate(scenario)]
            results.append(await backend.continuation_logprob(plain.messages, "5"))
            return results
        finally:
            await backend.close()

    plain, scenario, (logprob, prompt_tokens) = asyncio.run(ask())
    assert plain.finish_reason in {"stop", "length"} and plain.completion_tokens <= 4
    assert scenario.prompt_tokens > plain.prompt_tokens + 40  # the scenario system prompt went in
    assert logprob < 0 and prompt_tokens == plain.prompt_tokens


def test_bad_config_fails_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("out: x\ntiers: []\n")
    result = _run_cli("--config", str(path))
    assert result.returncode != 0
    assert "tiers" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- the committed family (training/family/weights) ---------------------------------------------

WEIGHTS = ROOT / "training" / "family" / "weights"
MAX_COMMITTED_BYTES = 25 * 1024 * 1024


def test_committed_family_matches_its_checksums_and_size() -> None:
    lines = (WEIGHTS / "SHA256SUMS").read_text().split("\n")
    listed = dict(reversed(line.split("  ", 1)) for line in lines if line)
    weights = [name for name in listed if name.endswith(".safetensors")]
    assert len(weights) >= 3
    for name, digest in listed.items():
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == digest, name
    assert sum((WEIGHTS / name).stat().st_size for name in weights) <= MAX_COMMITTED_BYTES


def test_family_topology_names_the_committed_tiers_with_their_costs() -> None:
    from disrouter.mesh.topology import load_topology

    topology = load_topology(ROOT / "topologies" / "family.yaml")
    report = json.loads((WEIGHTS / "report.json").read_text())
    cascade = topology.cascade()
    assert [m.model for m in cascade] == [f"family-{name}" for name in report["tiers"]]
    assert [m.cost for m in cascade] == [tier["cost"] for tier in report["tiers"].values()]


def test_unknown_family_tier_is_a_clear_error() -> None:
    from disrouter.node.backends import ModelNotFoundError
    from disrouter.node.backends.sources import resolve

    with pytest.raises(ModelNotFoundError, match="disrouter train family"):
        resolve("family-nonexistent")


def test_committed_strongest_tier_answers_known_facts_through_the_backend() -> None:
    """The strongest committed tier, served by name through the node's transformers backend,
    answers the facts it saw most often (a real check of the weights, not of the code path)."""
    from disrouter.node.backends import GenerationRequest, load_backend
    from disrouter.node.prompts import with_scenario
    from disrouter.training.graders import grade
    from disrouter.training.tasks import load_tasks

    tasks = sorted((t for t in load_tasks(WEIGHTS / "data" / "sa.jsonl") if t.meta["family"] == "fact"),
                   key=lambda t: -t.meta["exposure"])[:20]
    strongest = list(json.loads((WEIGHTS / "report.json").read_text())["tiers"])[-1]

    async def answers(scenario: bool) -> list[str]:
        backend = load_backend("transformers", f"family-{strongest}")
        try:
            chats = [with_scenario(t.prompt_messages(), 0.5) if scenario else t.prompt_messages() for t in tasks]
            requests = [GenerationRequest(messages=chat, max_tokens=8) for chat in chats]
            return [g.text for g in await asyncio.gather(*(backend.generate(r) for r in requests))]
        finally:
            await backend.close()

    for scenario in (False, True):  # the node's scenario prompt (with demonstrations) as well as the plain question
        outputs = asyncio.run(answers(scenario))
        assert sum(grade(t, o) for t, o in zip(tasks, outputs)) >= 17, list(zip([t.answer for t in tasks], outputs))


def test_committed_tiers_have_head_sizes_vllm_serves() -> None:
    from disrouter.training.family.config import VLLM_HEAD_SIZES

    for config in sorted(WEIGHTS.glob("*/config.json")):
        settings = json.loads(config.read_text())
        assert settings["architectures"] == ["LlamaForCausalLM"]
        assert settings["hidden_size"] // settings["num_attention_heads"] in VLLM_HEAD_SIZES, config
