"""Mesh-aware labels (objective.should_reject_in_mesh, mesh_reward; config key ``ceiling_probe``): a lower
tier answers a task no tier above does better on, on real family tasks with probe folders on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from disrouter.mesh.objective import forwarding_helps, mesh_reward, reward, should_reject, should_reject_in_mesh
from disrouter.node.prompts import REJECT_PHRASE
from disrouter.training.config import TrainingConfigError
from disrouter.training.pipeline import TrainConfig
from disrouter.training.probe import RECORDS_FILE, ProbeRecord, Sample
from disrouter.training.rl import RLStage, RLStageConfig, make_reward_function
from disrouter.training.sft import SFTStage, SFTStageConfig
from disrouter.training.tasks import Task

SA_TRAIN = Path(__file__).resolve().parents[1] / "training/family/weights/data/sa-train.jsonl"


def test_mesh_label_answers_only_where_forwarding_cannot_help() -> None:
    for competence, alpha in [(0.0, 0.5), (0.25, 0.2), (0.5, 0.8), (0.75, 0.2), (1.0, 0.5)]:
        assert should_reject_in_mesh(competence, alpha, ceiling=1.0) == should_reject(competence, alpha)
    assert not should_reject_in_mesh(0.0, 0.5, ceiling=0.0)  # every tier wrong: answer, the cheapest wrong answer
    assert not should_reject_in_mesh(0.25, 0.2, ceiling=0.25 + 1e-12)  # within the label tolerance: no better
    assert should_reject_in_mesh(0.0, 0.5, ceiling=0.125)  # the tier above is sometimes right: forward
    assert not forwarding_helps(0.5, 0.25) and forwarding_helps(0.0, 0.125)


def test_mesh_reward_never_pays_a_hopeless_reject_more_than_an_answer() -> None:
    for alpha in (0.2, 0.5, 0.8):
        assert mesh_reward(True, 0.0, alpha, forward_helps=False) == 0.0
        assert mesh_reward(False, 0.0, alpha, forward_helps=False) == 0.0
        assert mesh_reward(False, 1.0, alpha, forward_helps=False) == 1.0
        assert mesh_reward(True, 0.0, alpha) == reward(True, 0.0, alpha) == pytest.approx((1 - alpha) ** 0.5)


def _tasks() -> dict[str, Task]:
    """Real family tasks: the first fact and the first 3-digit addition of sa-train."""
    tasks = [Task.model_validate(json.loads(line)) for line in SA_TRAIN.read_text().splitlines()]
    fact = next(t for t in tasks if t.meta["family"] == "fact")
    add = next(t for t in tasks if t.meta["family"] == "add" and t.difficulty == 3)
    return {"fact": fact, "add": add}


def _probe(folder: Path, competence: dict[str, float], tasks: dict[str, Task]) -> list[ProbeRecord]:
    """A probe folder of 4 samples per task, the first competence * 4 right, the others off by one."""
    records = []
    for name, task in tasks.items():
        right = round(competence[name] * 4)
        samples = [Sample(text=task.answer if k < right else str(int(task.answer) + 1) if task.answer.isdigit() else "x",
                          correct=k < right, reject=False, completion_tokens=3, finish_reason="stop") for k in range(4)]
        records.append(ProbeRecord(id=task.id, task=task, competence=right / 4, correct=right, samples=samples))
    folder.mkdir(parents=True)
    (folder / RECORDS_FILE).write_text("".join(r.model_dump_json() + "\n" for r in records))
    return records


def test_config_path_switches_sft_and_rl_to_mesh_labels(tmp_path: Path) -> None:
    tasks = _tasks()
    own = _probe(tmp_path / "runs/s/probe", {"fact": 0.0, "add": 0.0}, tasks)  # tier s: wrong on both
    _probe(tmp_path / "runs/l/probe", {"fact": 1.0, "add": 0.0}, tasks)  # tier l: knows the fact, not the sum
    (tmp_path / "configs").mkdir()
    config_file = tmp_path / "configs/s.yaml"
    config_file.write_text("model: family-s\nout: ../runs/s\ntasks: {file: t.jsonl, split: meta}\nalphas: [0.2, 0.8]\n"
                           "sft: {balance: false, ceiling_probe: ../runs/l/probe}\nrl: {ceiling_probe: ../runs/l/probe}\n")
    config = TrainConfig.load(config_file)
    sft = SFTStageConfig.from_dict(config.section("sft"))
    rows = {(row["id"], row["alpha"]): row for row in SFTStage(sft, own).rows()}
    fact, add = tasks["fact"].id, tasks["add"].id
    for alpha in (0.2, 0.8):
        assert rows[(fact, alpha)]["reject"] and rows[(fact, alpha)]["completion"][0]["content"] == REJECT_PHRASE
        assert not rows[(add, alpha)]["reject"]  # hopeless above: s answers, imitating its own answer
        assert rows[(add, alpha)]["completion"][0]["content"] == str(int(tasks["add"].answer) + 1)
    paper = SFTStageConfig.from_dict({**config.section("sft"), "ceiling_probe": None})
    assert all(row["reject"] for row in SFTStage(paper, own).rows())  # default: the paper's per-model label

    rl = RLStageConfig.from_dict({**config.section("rl"), "max_steps": 1, "batch_size": 4, "num_generations": 4})
    helps = {row["id"]: row["forward_helps"] for row in RLStage(rl, own).rows()}
    assert helps == {fact: True, add: False}
    reject = [[{"role": "assistant", "content": REJECT_PHRASE}]] * 2
    rewards = make_reward_function(0.5)(prompts=[[]] * 2, completions=reject, task=[tasks["fact"].model_dump_json(),
                                        tasks["add"].model_dump_json()], alpha=[0.5, 0.5], forward_helps=[True, False])
    assert rewards == pytest.approx([0.5**0.5, 0.0])


def test_ceiling_probe_must_cover_every_training_task(tmp_path: Path) -> None:
    tasks = _tasks()
    own = _probe(tmp_path / "s", {"fact": 0.0, "add": 0.0}, tasks)
    _probe(tmp_path / "l", {"fact": 1.0}, {"fact": tasks["fact"]})
    with pytest.raises(TrainingConfigError, match="1 training tasks not probed"):
        SFTStage(SFTStageConfig(ceiling_probe=str(tmp_path / "l")), own).rows()
    with pytest.raises(TrainingConfigError, match="no probe results"):
        SFTStage(SFTStageConfig(ceiling_probe=str(tmp_path / "none")), own).rows()
