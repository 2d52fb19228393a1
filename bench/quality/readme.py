"""The README's routing-quality block (headline, utility table, targets, paired-bootstrap differences), generated from results.json.

``disrouter bench quality --out DIR --readme README.md`` rewrites it after a run, and with
``--report-only`` from the results already in DIR; a test checks the README and the committed
results agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from disrouter.bench.readme_table import between, replace_between

from .headline import CENTRALIZED, DISROUTER, NAMES, headline_rows
from .report import METHODS
from .uncertainty import RESAMPLES, verdict

BEGIN = "<!-- quality-table:begin (generated from bench/results/quality/results.json by bench/quality/readme.py; do not edit) -->"
END = "<!-- quality-table:end -->"
ORACLE_SHARE_ALPHA, ORACLE_SHARE_TARGET = 0.5, 0.8
"""Issue 11's target: DiSRouter keeps at least 80% of the oracle's utility at alpha 0.5."""


def _utilities(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, float]]:
    table: dict[str, dict[float, float]] = {}
    for r in rows:
        table.setdefault(r["method"], {})[r["alpha"]] = r["utility"]
    return table


def utility_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Utility per alpha per measured method, the best method apart from the oracle in bold per alpha."""
    table, alphas = _utilities(rows), sorted({r["alpha"] for r in rows})
    best = {a: max((u[a] for m, u in table.items() if m != "oracle" and a in u), default=None) for a in alphas}
    lines = ["| method | " + " | ".join(f"alpha {a:g}" for a in alphas) + " |", "|---" * (1 + len(alphas)) + "|"]
    for method in (m for m in METHODS if m in table):
        cells = [("–" if a not in table[method] else f"**{table[method][a]:.3f}**" if method != "oracle" and table[method][a] == best[a]
                  else f"{table[method][a]:.3f}") for a in alphas]
        lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
    return lines


def against_centralized(rows: Sequence[dict[str, Any]], label: str, comparisons: Sequence[dict[str, Any]] = ()) -> str:
    """DiSRouter SFT+RL (probe) against the best centralized router at each alpha, in words; with the paired
    bootstrap's verdict on the difference where ``comparisons`` has it."""
    table, ours = _utilities(rows), DISROUTER[0]
    judged = {(c["split"], c["alpha"], c["baseline"]): verdict(c["ci95"]) for c in comparisons
              if c["method"] == ours and c["pool"] == "all"}
    split = rows[0]["split"] if rows else None
    if ours not in table:
        return f"{label}: {NAMES[ours]} not measured"
    parts = []
    for alpha, mine in sorted(table[ours].items()):
        rival = max((m for m in CENTRALIZED if alpha in table.get(m, {})), key=lambda m: table[m][alpha], default=None)
        if rival is None:
            parts.append(f"alpha {alpha:g}: {mine:.3f}, no centralized router measured")
            continue
        side = "above" if mine > table[rival][alpha] else "**below**"
        noise = judged.get((split, alpha, rival))
        parts.append(f"alpha {alpha:g}: {mine:.3f} vs {table[rival][alpha]:.3f} ({rival}), {side}" + (f" (paired 95% CI of the difference: {noise})" if noise else ""))
    return f"{label}: " + "; ".join(parts)


def oracle_share(rows: Sequence[dict[str, Any]]) -> str:
    """DiSRouter's share of the oracle's utility at alpha 0.5 against the 80% target."""
    table = _utilities(rows)
    ours, oracle = table.get(DISROUTER[0], {}).get(ORACLE_SHARE_ALPHA), table.get("oracle", {}).get(ORACLE_SHARE_ALPHA)
    if ours is None or not oracle:
        return f"share of the oracle's utility at alpha {ORACLE_SHARE_ALPHA:g}: not measured"
    share = ours / oracle
    verdict = "met" if share >= ORACLE_SHARE_TARGET else "**missed**"
    return (f"{NAMES[DISROUTER[0]]} reaches {share:.0%} of the oracle's utility at alpha {ORACLE_SHARE_ALPHA:g} "
            f"({ours:.3f} / {oracle:.3f}; target ≥ {ORACLE_SHARE_TARGET:.0%}: {verdict})")


def significance_table(comparisons: Sequence[dict[str, Any]]) -> list[str]:
    """DiSRouter SFT+RL (probe) minus the best centralized router per split and alpha, all tiers, with the
    paired bootstrap's 95% interval (``uncertainty.annotate``); empty when it was not measured."""
    found = [c for c in comparisons if c["method"] == DISROUTER[0] and c["baseline"] in CENTRALIZED and c["pool"] == "all"]
    if not found:
        return []
    lines = [f"Is the difference real? {NAMES[DISROUTER[0]]} minus the best centralized router, all tiers (paired bootstrap "
             f"over the test queries, {RESAMPLES} resamples; P(better): share of resamples where DiSRouter's utility is higher; "
             "every arm and baseline in results.md):", "",
             "| split | alpha | best centralized | difference | 95% CI | P(better) | verdict |", "|---" * 7 + "|"]
    for c in sorted(found, key=lambda c: (c["split"] != "in_domain", c["alpha"])):
        lines.append(f"| {c['split']} | {c['alpha']:g} | {c['baseline']} | {c['difference']:+.3f} | "
                     f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | {c['p_better']:.2f} | {verdict(c['ci95'])} |")
    return ["", *lines]


def render(payload: dict[str, Any], json_path: str = "bench/results/quality/results.json") -> str:
    """The markdown between the markers: provenance, the headline line, the table, the targets."""
    m, rows, head = payload["meta"], payload["rows"], payload["headline"]
    commit = (m["commit"] or "unknown")[:10] + (" plus uncommitted changes" if m["dirty"] else "")
    in_domain = headline_rows(rows)
    return "\n".join([
        f"`{m['command']}` at commit `{commit}`, {m['date']}, {m['elapsed_s']:.0f} s on {m['machine']}"
        f"{'; ' + m['accelerator'] if m['accelerator'] else ''}; {payload['queries'].get('in_domain', '?')} in-domain and "
        f"{payload['queries'].get('ood', '?')} out-of-domain test queries ({json_path}).", "",
        f"Headline (cost saving against Largest-only at the measured alpha where a method keeps at least "
        f"{head['keep']:.0%} of Largest-only's accuracy, in-domain, all tiers): **{head['line']}**", "",
        "Utility, in-domain, all tiers (bold: the best per alpha apart from the oracle):", "",
        *utility_table(in_domain), "",
        "- " + against_centralized(in_domain, "In-domain, " + NAMES[DISROUTER[0]] + " against the best centralized router",
                                   payload.get("comparisons", [])),
        "- " + against_centralized(headline_rows(rows, split="ood"), "Out-of-domain, the same", payload.get("comparisons", [])),
        "- " + oracle_share(in_domain),
        *significance_table(payload.get("comparisons", [])),
    ])


def section(readme: str) -> str:
    """The generated quality block now in ``readme``."""
    return between(readme, BEGIN, END)


def update_readme(path: Path, payload: dict[str, Any], json_path: str = "bench/results/quality/results.json") -> None:
    """Rewrite the quality block of the README at ``path``."""
    replace_between(path, BEGIN, END, render(payload, json_path))
