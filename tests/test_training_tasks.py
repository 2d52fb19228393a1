"""Training tasks: graders, the task file format and its loaders, and synthetic generators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from disrouter.training.graders import GRADERS, extract_choice, extract_number, grade, normalise, register
from disrouter.training.synthetic import CAPITALS, KINDS, synthetic_tasks, write_synthetic
from disrouter.training.tasks import (
    CHOICE_INSTRUCTION,
    Task,
    TaskFileError,
    load_arc,
    load_gsm8k,
    load_mmlu,
    load_task_file,
    load_tasks,
    write_tasks,
)


def _task(answer: str, kind: str, choices: tuple[str, ...] | None = None) -> Task:
    return Task(id="t", question="q?", answer=answer, task=kind, choices=choices)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# --- graders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("42", 42),
        ("The answer is 42", 42),
        ("The answer is 42.", 42),
        ("So the total is $1,234.", 1234),
        ("Answer: $1,234.50", 1234.5),
        ("It costs -3 dollars", -3),
        ("First 6 * 7 = 42, then we add 8 to get 50.", 50),
        ("The answer is 42. Check: 6 * 7 = 42 and 40 + 2 = 42, 7 more days.", 42),
        ("Natalia sold 48 clips in April.\n#### 72", 72),
        ("\\boxed{3.5}", 3.5),
        ("10 - 5 = 5", 5),
        ('The letter "s" appears twice in "mississippi"... no, four times.', 4),
        ("Twenty-one apples", 21),
        ("no number here", None),
    ],
)
def test_numeric_extraction(output: str, expected: float | None) -> None:
    assert extract_number(output) == expected


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        ("The answer is 1,234.", True),
        ("1234", True),
        ("$1234.00", True),
        ("It is 1243.", False),
        ("I don't know!", False),
        ("", False),
    ],
)
def test_numeric_grader(output: str, correct: bool) -> None:
    assert grade(_task("1,234", "numeric"), output) is correct


@pytest.mark.parametrize(
    ("output", "letter"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("Answer: B", "B"),
        ("The answer is (b).", "B"),
        ("B. Paris", "B"),
        ("B) Paris", "B"),
        ("C is correct", "C"),
        ("I think **C** is right", "C"),
        ("A. London\nThe correct answer is D.", "D"),
        ("Paris", "B"),  # an option's text
        ("It must be Rome, the eternal city.", "C"),  # the only option it mentions
        ("London or Paris, hard to say", None),
        ("I'd say C", "C"),
        ("A city in France", None),  # "A" as an article
        ("Answer: E", None),  # not one of the four options
        ("no idea", None),
    ],
)
def test_choice_extraction(output: str, letter: str | None) -> None:
    assert extract_choice(output, ("London", "Paris", "Rome", "Berlin")) == letter


def test_choice_grader_compares_letters() -> None:
    task = _task("b", "choice", ("London", "Paris"))
    assert grade(task, "Answer: (B)")
    assert not grade(task, "A")


@pytest.mark.parametrize(
    ("output", "correct"),
    [
        ("The Eiffel Tower", True),
        ("eiffel tower.", True),
        ("  Eiffel   Tower!! ", True),
        ("an Eiffel Tower", True),
        ("The answer is: the Eiffel Tower.", True),
        ("Eiffel Tower\nIt is in Paris.", True),  # first line
        ("It is the Eiffel Tower in Paris.", False),
        ("Eiffel", False),
    ],
)
def test_exact_grader_normalises_case_punctuation_articles_whitespace(output: str, correct: bool) -> None:
    assert grade(_task("Eiffel tower", "exact"), output) is correct


def test_contains_grader_needs_whole_words_and_ignores_accents() -> None:
    task = _task("Brasília", "contains")
    assert grade(task, "The capital of Brazil is Brasilia.")
    assert not grade(task, "The capital is Brasiliana.")
    assert normalise("The  Capital, of Brasília!") == "capital of brasilia"


def test_grade_picks_the_grader_named_by_the_task_kind() -> None:
    output = "The answer is B, 42 of them."
    assert grade(_task("42", "numeric"), output)
    assert grade(_task("B", "choice", ("x", "y")), output)
    assert not grade(_task("42", "exact"), output)


def test_registered_graders_are_usable_task_kinds() -> None:
    @register("test-yes")
    def yes(output: str, task: Task) -> bool:
        return output.lower().startswith("yes")

    try:
        task = _task("yes", "test-yes")
        assert grade(task, "Yes, indeed") and not grade(task, "No")
    finally:
        del GRADERS["test-yes"]


# --- the task format ----------------------------------------------------------------------------


def test_task_prompt_is_the_plain_question_with_lettered_choices() -> None:
    task = Task(id="c", question="Which is larger?", choices=("3", "5"), answer="B", task="choice")
    assert task.prompt_messages() == [
        {"role": "user", "content": f"Which is larger?\n\nA. 3\nB. 5\n\n{CHOICE_INSTRUCTION}"}
    ]
    chat = Task(id="m", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], answer=4, task="numeric")
    assert chat.answer == "4"
    assert chat.prompt_messages() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "a", "answer": "1", "task": "numeric"}, "exactly one of 'question' and 'messages'"),
        ({"id": "a", "question": "q", "messages": [{"role": "user", "content": "q"}], "answer": "1", "task": "numeric"}, "exactly one"),
        ({"id": "a", "messages": [{"role": "assistant", "content": "q"}], "answer": "1", "task": "numeric"}, "end with a user turn"),
        ({"id": "a", "question": "q", "answer": "many", "task": "numeric"}, "not a number"),
        ({"id": "a", "question": "q", "answer": "C", "task": "choice", "choices": ["x", "y"]}, "not one of the letters A..B"),
        ({"id": "a", "question": "q", "answer": "x", "task": "fuzzy"}, "unknown task 'fuzzy'"),
        ({"id": "a", "question": "q", "answer": "x", "task": "exact", "answr": "x"}, "answr"),
    ],
)
def test_task_validation(row: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Task.model_validate(row)


def test_load_tasks_reports_every_bad_row_with_its_line_number(tmp_path: Path) -> None:
    good = {"id": "g1", "question": "What is 2 + 3?", "answer": "5", "task": "numeric"}
    path = _write(
        tmp_path / "tasks.jsonl",
        [
            good,  # line 1
            "{not json",  # line 2
            "",  # line 3: blank lines are allowed
            {"id": "g2", "question": "q", "task": "exact"},  # line 4: no answer
            {"id": "g3", "question": "q", "answer": "x", "task": "fuzzy"},  # line 5
            good,  # line 6: duplicate id
            [1, 2],  # line 7
            {"id": "g4", "question": "Capital of France?", "answer": "Paris", "task": "contains"},  # line 8
        ],
    )

    with pytest.raises(TaskFileError) as caught:
        load_tasks(path)

    assert [line for line, _ in caught.value.problems] == [2, 4, 5, 6, 7]
    message = str(caught.value)
    assert "5 bad rows" in message
    assert "line 2: not valid JSON" in message
    assert "line 4: answer: Field required" in message
    assert "line 6: duplicate id 'g1' (first on line 1)" in message
    assert "line 7: expected a JSON object" in message


def test_write_then_load_round_trips(tmp_path: Path) -> None:
    tasks = synthetic_tasks(per_level=2, seed=3)
    assert load_tasks(write_tasks(tasks, tmp_path / "out" / "t.jsonl")) == tasks


def test_gsm8k_loader(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "gsm8k.jsonl",
        [
            {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?", "answer": "48/2 = 24\n48 + 24 = 72\n#### 72"},
            {"question": "How much is a big prize?", "answer": "It is $1,200.\n#### 1,200"},
            {"question": "Same question twice?", "answer": "#### 3"},
            {"question": "Same question twice?", "answer": "#### 3"},
        ],
    )
    tasks = load_gsm8k(path)

    assert [t.answer for t in tasks] == ["72", "1200", "3", "3"]
    assert all(t.task == "numeric" and t.meta == {"source": "gsm8k"} for t in tasks)
    assert tasks[3].id == tasks[2].id + "-2"  # a repeated question keeps a distinct, stable id
    assert load_gsm8k(path) == tasks
    assert grade(tasks[0], "She sold 24 in May, so 72 in total.")


def test_gsm8k_loader_reports_rows_without_a_final_answer(tmp_path: Path) -> None:
    path = _write(tmp_path / "gsm8k.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q2", "answer": "no marker"}, {"answer": "#### 2"}])
    with pytest.raises(TaskFileError) as caught:
        load_gsm8k(path)
    assert caught.value.problems == [(2, "'answer' has no final '#### <number>' line"), (3, "missing key 'question'")]


def test_mmlu_loader_takes_an_index_or_a_letter(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "mmlu.jsonl",
        [
            {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
            {"question": "Capital of Peru?", "choices": ["Lima", "Quito"], "answer": "A"},
            {"question": "Bad", "choices": ["x", "y"], "answer": 7},
        ],
    )
    with pytest.raises(TaskFileError) as caught:
        load_mmlu(path)
    assert caught.value.problems == [(3, "answer index 7 is outside the 2 choices")]

    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    first, second = load_mmlu(path)
    assert (first.answer, first.choices, first.meta) == ("B", ("3", "4", "5", "6"), {"source": "mmlu", "subject": "math"})
    assert second.answer == "A" and second.task == "choice"


def test_arc_loader_reads_both_layouts_and_numeric_labels(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "arc.jsonl",
        [
            {"id": "Mercury_1", "question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"},
            {"id": "Q2", "question": {"stem": "Pick three", "choices": [{"text": "one", "label": "1"}, {"text": "three", "label": "2"}]}, "answerKey": "2"},
            {"question": "Bad key", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "E"},
        ],
    )
    with pytest.raises(TaskFileError, match=r"line 3: answerKey 'E' is not one of the labels"):
        load_arc(path)

    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    first, second = load_task_file(path, "arc")
    assert (first.id, first.answer, first.choices) == ("arc-Mercury_1", "B", ("ice", "steam"))
    assert (second.id, second.question, second.answer) == ("arc-Q2", "Pick three", "B")


def test_load_task_file_rejects_unknown_formats_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown task file format 'squad'"):
        load_task_file(tmp_path / "x.jsonl", "squad")
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "missing.jsonl")


# --- synthetic tasks ----------------------------------------------------------------------------


def test_synthetic_tasks_are_deterministic_by_seed() -> None:
    first = synthetic_tasks(per_level=5, seed=7)
    assert synthetic_tasks(per_level=5, seed=7) == first
    assert synthetic_tasks(per_level=5, seed=8) != first
    # one kind alone gives the same rows it gives among all kinds
    assert synthetic_tasks(["letters"], per_level=5, seed=7) == [t for t in first if t.meta["generator"] == "letters"]


def test_synthetic_tasks_are_the_same_in_another_process(tmp_path: Path) -> None:
    here = write_synthetic(tmp_path / "here.jsonl", per_level=4, seed=11)
    code = f"from disrouter.training.synthetic import write_synthetic; write_synthetic({str(tmp_path / 'there.jsonl')!r}, per_level=4, seed=11)"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ | {"PYTHONHASHSEED": "123"})
    assert (tmp_path / "there.jsonl").read_text() == here.read_text()


def test_synthetic_tasks_carry_difficulty_levels_and_valid_answers() -> None:
    tasks = synthetic_tasks(per_level=6, seed=0)

    assert len({t.id for t in tasks}) == len(tasks)
    for name, kind in KINDS.items():
        rows = [t for t in tasks if t.meta["generator"] == name]
        assert sorted({t.difficulty for t in rows}) == list(range(1, kind.levels + 1)), name
        questions = [(t.question, t.choices) for t in rows]
        assert len(set(questions)) == len(questions), f"{name} repeats a question"
    for task in tasks:  # the reference answer, said plainly, passes the task's own grader
        assert grade(task, f"The answer is {task.answer}."), task


def test_synthetic_answers_are_right() -> None:
    by_id = {t.id: t for t in synthetic_tasks(per_level=3, seed=2)}
    addition = by_id["addition-3-0001"]
    a, b = (int(x) for x in addition.question.removeprefix("What is ").removesuffix("?").split(" + "))
    assert addition.answer == str(a + b)
    product = by_id["multiplication-6-0002"]
    a, b = (int(x) for x in product.question.removeprefix("What is ").removesuffix("?").split(" * "))
    assert product.answer == str(a * b) and len(str(a)) == len(str(b)) == 4
    comparison = by_id["comparison-4-0001"]
    larger = max(comparison.choices, key=float)
    assert comparison.answer == "AB"[comparison.choices.index(larger)]
    letters = by_id["letters-2-0001"]
    letter, word = letters.question.split('"')[1::2]
    assert letters.answer == str(word.count(letter))


def test_synthetic_levels_with_a_small_pool_give_what_they_have() -> None:
    tasks = synthetic_tasks(["capitals"], per_level=100, seed=0)
    assert [sum(t.difficulty == level for t in tasks) for level in CAPITALS] == [len(CAPITALS[level]) for level in CAPITALS]
    assert len(synthetic_tasks(["addition"], per_level=5, max_level=2)) == 10


def test_synthetic_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown synthetic kinds"):
        synthetic_tasks(["poetry"])
