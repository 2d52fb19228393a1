"""The demo's table and verdict: each reply graded by the project's grader, and the mesh's utility
(accuracy - alpha * cost, disrouter.mesh.objective) against Largest-only on the same questions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

from disrouter.mesh.objective import system_utility
from disrouter.mesh.protocol import Answer
from disrouter.training.graders import grade
from disrouter.training.tasks import Task


@dataclass(frozen=True)
class Scored:
    """One question, what the mesh replied, whether it is right and the cost of the tier that answered."""

    task: Task
    reply: Answer | BaseException
    right: bool
    cost: float


def score(tasks: Sequence[Task], replies: Sequence[Answer | BaseException], costs: dict[str, float]) -> list[Scored]:
    """Grade each answer; a failed query is wrong and costs nothing (no tier answered)."""
    return [
        Scored(task, reply, grade(task, reply.text), costs[reply.model]) if isinstance(reply, Answer) else Scored(task, reply, False, 0.0)
        for task, reply in zip(tasks, replies)
    ]


@dataclass(frozen=True)
class Summary:
    """Accuracy, mean cost of the answering tier (the paper's cost) and the system utility."""

    right: int
    n: int
    cost: float
    utility: float

    def line(self, who: str, alpha: float) -> str:
        """One line: who, right of n, cost, utility."""
        return f"{who}: {self.right}/{self.n} right, mean cost {self.cost:.3f}, utility {self.utility:.3f} (alpha {alpha:g})"


def summarise(scored: Sequence[Scored], alpha: float) -> Summary:
    """The mesh's objective over the questions: accuracy - alpha * mean cost."""
    n = len(scored)
    right = sum(s.right for s in scored)
    cost = sum(s.cost for s in scored) / n if n else 0.0
    return Summary(right, n, cost, system_utility(right / n if n else 0.0, cost, alpha))


def path_of(answer: Answer) -> str:
    """The tiers the query passed, with each one's decision: ``family-s (reject) -> family-m (answer)``."""
    return " -> ".join(f"{hop.model} ({hop.decision})" for hop in answer.path)


def results_table(title: str, scored: Sequence[Scored]) -> Table:
    """Per question: the question, the expected answer, the answer, right or wrong, the tier and the path."""
    table = Table(title=title, show_lines=True)
    for column, style in (("question", "bold"), ("expected", ""), ("answer", ""), ("right", ""), ("tier", "cyan"), ("path", "magenta"), ("ms", "")):
        table.add_column(column, style=style, overflow="fold")
    for s in scored:
        mark = "[green]yes[/green]" if s.right else "[red]no[/red]"
        if isinstance(s.reply, Answer):
            ms = sum(hop.ms for hop in s.reply.path)
            table.add_row(s.task.prompt_messages()[-1]["content"], s.task.answer, s.reply.text.strip()[:120], mark, s.reply.model, path_of(s.reply), f"{ms:.0f}")
        else:
            table.add_row(s.task.prompt_messages()[-1]["content"], s.task.answer, f"[red]{s.reply}[/red]", mark, "-", "-", "-")
    return table
