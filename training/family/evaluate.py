"""Accuracy of a tier per task family: greedy, and sampled competence (mean over samples).

Queries are asked the way the probe asks them (``Task.prompt_messages`` through the chat
template) and judged by the project's graders.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from ..graders import grade
from ..tasks import Task


def generate(model, tokenizer, tasks: list[Task], max_new_tokens: int, temperature: float = 0.0,
             batch_size: int = 64, seed: int = 0, on_batch: Callable[[int], None] | None = None) -> list[str]:  # noqa: ANN001
    """One output per task: greedy when ``temperature`` is 0, else sampled."""
    import torch

    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    outputs: list[str] = []
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        prompts = [list(tokenizer.apply_chat_template(t.prompt_messages(), add_generation_prompt=True)["input_ids"]) for t in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0} if temperature > 0 else {"do_sample": False}
        with torch.inference_mode():
            new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, **sampling)[:, width:]
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
        if on_batch is not None:
            on_batch(len(chunk))
    return [text.strip() for text in outputs]


def group_of(task: Task) -> str:
    """The report row a task belongs to: its family, with the relation or the digit count."""
    family = task.meta.get("family", "?")
    if family in ("add", "add_phrasing"):
        return f"{family}/{task.difficulty}d"
    return f"{family}/{task.meta.get('relation', '?')}"


def majority_answers(tasks: list[Task]) -> list[str]:
    """The trivial baseline: for every task, the most common reference answer of its relation
    (e.g. the most common city) or, for additions, of its digit count; no answer ("") where no
    answer repeats (choosing one would only copy a single task's answer)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for task in tasks:
        counts[_answer_pool(task)][task.answer] += 1
    modal = {pool: counter.most_common(1)[0] for pool, counter in counts.items()}
    return [modal[_answer_pool(t)][0] if modal[_answer_pool(t)][1] > 1 else "" for t in tasks]


def _answer_pool(task: Task) -> str:
    relation = task.meta.get("relation", "?")
    return f"add/{task.difficulty}" if relation == "add" else relation


def accuracy_table(tasks: list[Task], greedy: list[str], sampled: list[list[str]]) -> dict[str, dict[str, float]]:
    """Per group (and per family, and ``all``): n, greedy accuracy, sampled competence."""
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for index, task in enumerate(tasks):
        right = float(grade(task, greedy[index]))
        competence = sum(grade(task, s[index]) for s in sampled) / len(sampled) if sampled else right
        family = task.meta.get("family", "?")
        for key in ("all", family, group_of(task)):
            row = sums[key]
            row[0] += 1
            row[1] += right
            row[2] += competence
    return {key: {"n": int(n), "greedy": round(g / n, 4), "sampled": round(s / n, 4)} for key, (n, g, s) in sorted(sums.items())}
