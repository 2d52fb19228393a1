"""The headline routers are compared by (RouteLLM's "85% cheaper at 95% of GPT-4"), from results rows.

Per method, among the measured alphas (in-domain, all tiers): the one whose accuracy is at least
95% of Largest-only's and whose cost saving against Largest-only is the largest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

KEEP = 0.95
"""Share of Largest-only's accuracy a method must keep for its saving to count."""
DISROUTER = ("sftrl_probe", "sftrl_generate")
"""The DiSRouter methods the headline reports, the first one in the README's line."""
CENTRALIZED = ("knn", "mlp", "cascade")
"""The centralized routers; the headline names the best of them by the same rule."""
NAMES = {
    "oracle": "oracle", "smallest": "smallest only", "largest": "largest only", "random": "random tier",
    "knn": "kNN router (MiniLM)", "mlp": "MLP router (MiniLM)", "cascade": "FrugalGPT-style cascade",
    "untrained_generate": "DiSRouter untrained, generate", "untrained_probe": "DiSRouter untrained, probe",
    "untrained_confidence": "untrained tiers, own-answer logprob threshold",
    "sft_generate": "DiSRouter SFT, generate", "sft_probe": "DiSRouter SFT, probe",
    "sftrl_generate": "DiSRouter SFT+RL, generate", "sftrl_probe": "DiSRouter SFT+RL, probe",
}
"""How people read each method's key."""


def headline_rows(rows: Sequence[dict[str, Any]], split: str = "in_domain", pool: str = "all") -> list[dict[str, Any]]:
    """The measured rows the headline is computed from."""
    return [r for r in rows if r["split"] == split and r["pool"] == pool and r["status"] == "ok"]


def best_saving(rows: Sequence[dict[str, Any]], method: str, keep: float = KEEP) -> dict[str, Any]:
    """``method``'s largest cost saving against Largest-only among alphas keeping ``keep`` of its accuracy.

    Rows are one (split, pool); Largest-only's row at the same alpha is the reference. ``alpha`` is
    None when no measured alpha qualifies (or the method was not measured).
    """
    largest = {r["alpha"]: r for r in rows if r["method"] == "largest"}
    found: dict[str, Any] = {"method": method, "alpha": None, "cost_saving": None, "accuracy_share": None,
                             "accuracy": None, "cost": None, "largest_accuracy": None, "largest_cost": None}
    for row in sorted((r for r in rows if r["method"] == method and r["alpha"] in largest), key=lambda r: r["alpha"]):
        ref = largest[row["alpha"]]
        share = row["accuracy"] / ref["accuracy"] if ref["accuracy"] else 0.0
        saving = 1.0 - row["cost"] / ref["cost"] if ref["cost"] else 0.0
        if share >= keep and (found["cost_saving"] is None or saving > found["cost_saving"]):
            found.update(alpha=row["alpha"], cost_saving=saving, accuracy_share=share, accuracy=row["accuracy"], cost=row["cost"],
                         largest_accuracy=ref["accuracy"], largest_cost=ref["cost"])
    return found


def headline(rows: Sequence[dict[str, Any]], keep: float = KEEP) -> dict[str, Any]:
    """results.json's ``headline``: each DiSRouter method and the best centralized router, and the line."""
    group = headline_rows(rows)
    disrouter = {m: best_saving(group, m, keep) for m in DISROUTER}
    centralized = [best_saving(group, m, keep) for m in CENTRALIZED]
    qualifying = [c for c in centralized if c["alpha"] is not None]
    best = max(qualifying, key=lambda c: c["cost_saving"]) if qualifying else {**centralized[0], "method": None}
    result = {"split": "in_domain", "pool": "all", "keep": keep, "disrouter": disrouter, "best_centralized": best}
    return {**result, "line": line(result)}


def _claim(found: dict[str, Any], keep: float) -> str:
    if found["alpha"] is None:
        return f"no measured alpha keeps {keep:.0%} of Largest-only's accuracy"
    return (f"{found['cost_saving']:.0%} cheaper than Largest-only at {found['accuracy_share']:.0%} of its accuracy "
            f"(alpha {found['alpha']:g}: accuracy {found['accuracy']:.3f} vs {found['largest_accuracy']:.3f}, "
            f"cost {found['cost']:.3f} vs {found['largest_cost']:.3f})")


def line(result: dict[str, Any]) -> str:
    """The README's one line: DiSRouter (SFT+RL, probe) and the best centralized router."""
    keep, ours, best = result["keep"], result["disrouter"][DISROUTER[0]], result["best_centralized"]
    theirs = f"best centralized router ({NAMES[best['method']]}): {_claim(best, keep)}" if best["method"] else (
        f"centralized routers ({', '.join(NAMES[m] for m in CENTRALIZED)}): {_claim(best, keep)}")
    return f"{NAMES[DISROUTER[0]]}: {_claim(ours, keep)}; {theirs}."
