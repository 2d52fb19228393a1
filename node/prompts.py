"""The reject phrase and the scenario instruction: the one place training and serving share them."""

from __future__ import annotations

import re

from disrouter.mesh.objective import answer_pays_threshold, scenario_title

REJECT_PHRASE = "I don't know!"


def scenario_instruction(alpha: float) -> str:
    """System instruction telling the model the scenario and when to answer with the reject phrase.

    The required confidence is where answering starts to pay under the paper's reward.
    """
    name = scenario_title(alpha)
    confidence = round(100 * answer_pays_threshold(alpha))
    return (
        f"Scenario: {name}. Answer only if you are at least {confidence}% sure your answer is correct. "
        f"Otherwise reply with exactly \"{REJECT_PHRASE}\" and nothing else; a stronger model will answer. "
        "When you answer, think step by step, then give the final answer."
    )


DEMONSTRATIONS: list[tuple[str, str]] = [
    ("What is 7391 * 2864?", REJECT_PHRASE),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("Who won the 1911 Tour de France?", REJECT_PHRASE),
    ("How many days are in a week?", "There are seven days in a week."),
]
"""Few-shot turns that show an untrained model when to use the reject phrase."""


def with_scenario(messages: list[dict[str, str]], alpha: float, demonstrations: bool = True) -> list[dict[str, str]]:
    """The chat behind the scenario instruction (merged into the system message) and, for
    untrained models, demonstration turns before the user's messages."""
    instruction = scenario_instruction(alpha)
    if messages and messages[0]["role"] == "system":
        system = {"role": "system", "content": f"{instruction}\n\n{messages[0]['content']}"}
        messages = messages[1:]
    else:
        system = {"role": "system", "content": instruction}
    shots = []
    for question, reply in DEMONSTRATIONS if demonstrations else []:
        shots += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return [system, *shots, *messages]


def _normalise(text: str) -> str:
    letters = re.sub(r"[^a-z ]+", "", text.lower().replace("’", "'"))
    return " ".join(letters.split())


_REJECT_NORMALISED = _normalise(REJECT_PHRASE)


def is_reject(text: str) -> bool:
    """True when the output is the reject phrase (case, quotes, punctuation and spacing ignored)."""
    return _normalise(text.strip().strip("\"'`")) == _REJECT_NORMALISED


def could_become_reject(text: str) -> bool:
    """True while ``text`` (a prefix of an output) may still end up being the reject phrase."""
    normalised = _normalise(text.strip().strip("\"'`"))
    return _REJECT_NORMALISED.startswith(normalised)


def reject_variants() -> list[str]:
    """Spellings of the reject phrase to suppress when a node must answer."""
    return [REJECT_PHRASE, " " + REJECT_PHRASE, REJECT_PHRASE.rstrip("!"), " " + REJECT_PHRASE.rstrip("!")]
