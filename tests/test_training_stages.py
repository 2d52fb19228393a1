"""Stage 1 (SFT) and Stage 2 (RL): example building, the reward, and real short runs on SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from disrouter.node.backends import GenerationRequest, load_backend
from disrouter.node.prompts import REJECT_PHRASE, with_scenario
from disrouter.training.config import TrainingConfigError
from disrouter.training.output import LOG_FILE, MARKER_FILE, finished_model, resume_key
from disrouter.training.probe import ProbeRecord, Sample
from disrouter.training.rl import RLStageConfig, build_rl_prompts, make_reward_function, reward, train_rl
from disrouter.training.sft import SFTStageConfig, build_sft_examples, train_sft
from disrouter.training.tasks import Task


def _record(i: int, competence: float, samples: int = 4) -> ProbeRecord:
    """An addition query whose first round(competence * samples) samples are right."""
    task = Task(id=f"add-{i}", question=f"What is {i} + 10?", answer=str(i + 10), task="numeric")
    right = round(competence * samples)
    rows = [
        Sample(text=f"{i} + 10 = {i + 10 + (k if k >= right else 0)}. Try {k}.", correct=k < right, reject=False,
               completion_tokens=8, finish_reason="stop")
        for k in range(samples)
    ]
    return ProbeRecord(id=task.id, task=task, competence=right / samples, correct=right, samples=rows)


RECORDS = [_record(i, c) for i, c in enumerate([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 0.0, 0.5])]


# --- SFT examples -----------------------------------------------------------------------------


def test_sft_labels_follow_competence_threshold_per_alpha() -> None:
    examples = build_sft_examples(RECORDS, SFTStageConfig(alphas=[0.2, 0.5, 0.8], balance=False))
    by_key = {(e["id"], e["alpha"]): e for e in examples}
    competence = {r.id: r.competence for r in RECORDS}
    assert len(examples) == len(RECORDS) * 3  # every record has a correct sample or is a reject
    for (query, alpha), example in by_key.items():
        assert example["reject"] == (competence[query] < 1 - alpha)
    # p = 0.75: rejected when alpha = 0.2 (needs 0.8), answered when alpha = 0.5 or 0.8
    assert [by_key[("add-3", a)]["reject"] for a in (0.2, 0.5, 0.8)] == [True, False, False]
    assert by_key[("add-2", 0.5)]["reject"] is False  # p = 0.5 is not below 1 - 0.5


def test_sft_targets_and_prompts() -> None:
    examples = build_sft_examples(RECORDS, SFTStageConfig(alphas=[0.5], balance=False))
    records = {r.id: r for r in RECORDS}
    for example in examples:
        record = records[example["id"]]
        target = example["completion"]
        assert len(target) == 1 and target[0]["role"] == "assistant"
        if example["reject"]:
            assert target[0]["content"] == REJECT_PHRASE
        else:
            assert target[0]["content"] in {s.text for s in record.samples if s.correct}
        assert example["prompt"] == with_scenario(record.task.prompt_messages(), 0.5, demonstrations=False)


def test_sft_skips_accepts_without_a_correct_sample_and_prefers_finished_ones() -> None:
    record = _record(1, 1.0, samples=2)
    cut = record.samples[0].model_copy(update={"finish_reason": "length"})
    record = record.model_copy(update={"samples": [cut, record.samples[1]]})
    for seed in range(5):
        [example] = build_sft_examples([record], SFTStageConfig(alphas=[0.5], balance=False, seed=seed))
        assert example["completion"][0]["content"] == record.samples[1].text
    broken = record.model_copy(update={"samples": [s.model_copy(update={"correct": False}) for s in record.samples]})
    assert build_sft_examples([broken], SFTStageConfig(alphas=[0.5], balance=False)) == []


def test_sft_balance_is_per_alpha_and_deterministic() -> None:
    config = SFTStageConfig(alphas=[0.2, 0.5, 0.8], seed=3)
    examples = build_sft_examples(RECORDS, config)
    for alpha in config.alphas:
        rows = [e for e in examples if e["alpha"] == alpha]
        rejects = sum(e["reject"] for e in rows)
        assert rows and rejects == len(rows) - rejects
    # alpha 0.2: 2 accepts (p = 1) against 6 rejects -> 2 + 2
    assert sum(e["alpha"] == 0.2 for e in examples) == 4
    assert build_sft_examples(RECORDS, config) == examples
    assert build_sft_examples(list(reversed(RECORDS)), config) == examples
    assert len(build_sft_examples(RECORDS, SFTStageConfig(max_examples=5))) == 5


def test_sft_balance_drops_an_alpha_with_one_class() -> None:
    confident = [_record(i, 1.0) for i in range(4)]
    assert build_sft_examples(confident, SFTStageConfig(alphas=[0.5])) == []
    assert len(build_sft_examples(confident, SFTStageConfig(alphas=[0.5], balance=False))) == 4


def test_stage_configs_refuse_unknown_keys_and_bad_values() -> None:
    assert SFTStageConfig.from_dict({"alphas": [0.2, 0.8], "max_steps": 3}).max_steps == 3
    with pytest.raises(TrainingConfigError, match="unknown keys \\['epoch'\\].*known keys: alphas"):
        SFTStageConfig.from_dict({"epoch": 2})
    with pytest.raises(TrainingConfigError, match="unknown keys \\['steps'\\]"):
        RLStageConfig.from_dict({"steps": 2})
    with pytest.raises(TrainingConfigError, match="multiple of num_generations"):
        RLStageConfig.from_dict({"batch_size": 6, "num_generations": 4})
    with pytest.raises(TrainingConfigError, match="alphas \\[1.0\\] must lie strictly between 0 and 1"):
        SFTStageConfig(alphas=[1.0])
    with pytest.raises(TrainingConfigError, match="list of numbers"):
        RLStageConfig.from_dict({"alphas": ["x"]})
    assert RLStageConfig.from_dict(None) == RLStageConfig()


def test_resume_needs_a_complete_folder_from_the_same_settings_and_start(tmp_path: Path) -> None:
    start = tmp_path / "sft" / "model"
    start.mkdir(parents=True)
    (start / MARKER_FILE).write_text('{"stage": "sft", "seconds": 1}')
    config, ids = SFTStageConfig(), [r.id for r in RECORDS]
    key = resume_key(config, start, ids)
    out = tmp_path / "rl"
    assert finished_model(out, key) is None
    (out / "model").mkdir(parents=True)  # cut off before the marker was written
    assert finished_model(out, key) is None and not (out / "model").exists()
    (out / "model").mkdir()
    (out / "model" / MARKER_FILE).write_text(json.dumps({"resume_key": key}))
    assert finished_model(out, resume_key(SFTStageConfig(), start, list(reversed(ids)))) == out / "model"
    with pytest.raises(TrainingConfigError, match="config differ"):
        finished_model(out, resume_key(SFTStageConfig(seed=1), start, ids))
    with pytest.raises(TrainingConfigError, match="record_ids, records differ"):
        finished_model(out, resume_key(config, start, ids[:-1]))
    (start / MARKER_FILE).write_text('{"stage": "sft", "seconds": 2}')  # the SFT stage was trained again
    with pytest.raises(TrainingConfigError, match="model_run differ"):
        finished_model(out, resume_key(config, start, ids))


# --- RL reward and prompts --------------------------------------------------------------------


def test_reward_values() -> None:
    task = Task(id="t", question="What is 2 + 3?", answer="5", task="numeric")
    assert reward(task, "2 + 3 = 5", 0.5, 0.5) == 1.0
    assert reward(task, "The answer is 6.", 0.5, 0.5) == 0.0
    assert reward(task, "I don't know!", 0.2, 0.5) == pytest.approx(0.8**0.5)
    assert reward(task, " i don't know ", 0.8, 0.5) == pytest.approx(0.2**0.5)
    assert reward(task, "I don't know!", 0.5, 1.0) == pytest.approx(0.5)


def test_reward_function_reads_conversational_completions_and_columns() -> None:
    task = Task(id="t", question="What is 2 + 3?", answer="5", task="numeric").model_dump_json()
    logged: dict[str, float] = {}
    function = make_reward_function(gamma=0.5)
    completions = [[{"role": "assistant", "content": text}] for text in ("It is 5.", "I don't know!", "It is 4.", "5")]
    rewards = function(prompts=[[]] * 4, completions=completions, task=[task] * 4, alpha=[0.2, 0.8, 0.5, 0.5],
                       completion_ids=None, trainer_state=None, log_metric=logged.__setitem__, id=["t"] * 4)
    assert rewards == pytest.approx([1.0, 0.2**0.5, 0.0, 1.0])
    assert logged == {"reject_rate": 0.25, "correct_rate": 0.5}
    assert function(prompts=["q"], completions=["It is 5."], task=[task], alpha=[0.5]) == [1.0]


def test_rl_prompts_sample_alphas_deterministically() -> None:
    config = RLStageConfig(alphas=[0.2, 0.5, 0.8], seed=1)
    rows = build_rl_prompts(RECORDS, config, count=20)
    assert len(rows) == 24  # whole passes over the records until there are enough rows
    assert rows == build_rl_prompts(RECORDS, config, count=20)
    assert {row["alpha"] for row in rows} == {0.2, 0.5, 0.8}
    for row in rows:
        task = Task.model_validate_json(row["task"])
        assert task.id == row["id"] and row["prompt"] == with_scenario(task.prompt_messages(), row["alpha"], demonstrations=False)
    assert len({row["id"] for row in build_rl_prompts(RECORDS, RLStageConfig(max_prompts=3))}) == 3


# --- real training runs on SmolLM2 ------------------------------------------------------------


async def _generate(folder: Path) -> str:
    backend = load_backend("transformers", str(folder))
    try:
        messages = with_scenario([{"role": "user", "content": "What is 3 + 10?"}], 0.5, demonstrations=False)
        generation = await backend.generate(GenerationRequest(messages=messages, max_tokens=6))
    finally:
        await backend.close()
    assert generation.completion_tokens >= 1
    return generation.text


@pytest.mark.slow
async def test_sft_trains_saves_a_loadable_model_and_resumes(tmp_path: Path, smollm2_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SFTStageConfig(alphas=[0.5, 0.8], max_steps=2, batch_size=4, max_length=192)
    out = tmp_path / "sft"

    folder = train_sft(config, RECORDS, smollm2_folder, out, progress=False)

    assert folder == out / "model" and (folder / "config.json").is_file() and (folder / MARKER_FILE).is_file()
    assert (folder / "tokenizer_config.json").is_file() and not (folder / "adapter_config.json").exists()  # merged
    summary = json.loads((out / LOG_FILE).read_text())
    losses = [row["loss"] for row in summary["log_history"] if "loss" in row]
    assert summary["steps"] == 2 and len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert summary["examples"] == len(build_sft_examples(RECORDS, config)) and summary["seconds_per_step"] > 0
    await _generate(folder)

    import trl

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished stage must not train again")

    monkeypatch.setattr(trl, "SFTTrainer", refuse)
    assert train_sft(config, RECORDS, smollm2_folder, out, progress=False) == folder
    with pytest.raises(TrainingConfigError, match="other settings"):
        train_sft(SFTStageConfig(alphas=[0.5, 0.8], max_steps=3, batch_size=4, max_length=192), RECORDS, smollm2_folder, out, progress=False)


@pytest.mark.slow
async def test_grpo_trains_and_saves_a_loadable_model(tmp_path: Path, smollm2_folder: Path) -> None:
    config = RLStageConfig(alphas=[0.2, 0.8], num_generations=2, max_completion_length=8, batch_size=4, max_steps=2)
    out = tmp_path / "rl"
    (out / "model").mkdir(parents=True)  # an interrupted earlier run: no marker, so it is replaced

    folder = train_rl(config, RECORDS[:4], smollm2_folder, out, progress=False)

    assert (folder / "config.json").is_file() and (folder / MARKER_FILE).is_file()
    summary = json.loads((out / LOG_FILE).read_text())
    rewards = [row["reward"] for row in summary["log_history"] if "reward" in row]
    assert summary["steps"] == 2 and len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    assert any("reject_rate" in key for row in summary["log_history"] for key in row)
    await _generate(folder)
    assert train_rl(config, RECORDS[:4], smollm2_folder, out, progress=False) == folder
