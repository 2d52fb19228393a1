"""The family report: accuracy per tier and task family (greedy and sampled), as markdown, JSON and a PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAMILY_ORDER = ("fact", "add", "two_hop", "phrasing", "add_phrasing")


def write_report(out: Path, summary: dict[str, Any]) -> list[Path]:
    """Write report.md, report.json and accuracy.png into ``out``; return their paths."""
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))
    paths = [out / "report.md", out / "report.json"]
    png = plot(out / "accuracy.png", summary)
    return paths + ([png] if png else [])


def _table(summary: dict[str, Any], split: str) -> list[str]:
    tiers = list(summary["tiers"])
    groups: list[str] = []
    for tier in tiers:
        for key in summary["tiers"][tier]["accuracy"][split]:
            if key not in groups:
                groups.append(key)
    head = "| group | n | majority | " + " | ".join(f"{t} greedy | {t} sampled" for t in tiers) + " |"
    rows = [head, "|" + "---|" * (3 + 2 * len(tiers))]
    majority = summary.get("majority_baseline", {}).get(split, {})
    for group in sorted(groups, key=lambda g: (g != "all", "/" in g, g)):
        cells = [summary["tiers"][t]["accuracy"][split].get(group) for t in tiers]
        n = next((c["n"] for c in cells if c), 0)
        values = " | ".join(f"{c['greedy']:.2f} | {c['sampled']:.2f}" if c else "- | -" for c in cells)
        base = f"{majority[group]['greedy']:.2f}" if group in majority else "-"
        rows.append(f"| {'**all**' if group == 'all' else group} | {n} | {base} | {values} |")
    return rows


def markdown(summary: dict[str, Any]) -> str:
    """The report as markdown: tiers, then accuracy in-domain and out-of-domain."""
    lines = ["# Model family: capability per tier", "", f"Command: `{summary['command']}`", "",
             "| tier | params | layers | hidden | steps | corpus passes | train seconds | tokens/s | FLOPs/token | cost |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, tier in summary["tiers"].items():
        t = tier["training"]
        lines.append(f"| {name} | {tier['params']:,} | {tier['layers']} | {tier['hidden']} | {t['steps']} | {t['passes']} | "
                     f"{t['seconds']} | {t['tokens_per_second']:,.0f} | {tier['flops_per_token']:,} | {tier['cost']} |")
    lines += ["", "Cost: proportional to compute per token (2 FLOPs per matrix weight a token passes), "
              "the strongest tier at 0.9.", "",
              "Majority: the trivial baseline that always gives the most common answer of the relation "
              "(or of the digit count, for additions).", "",
              f"## In-domain (self-awareness queries, all splits; sampled: mean of {summary['samples']} samples "
              f"at temperature {summary['temperature']})", "", *_table(summary, "in_domain"), "",
              "## Out-of-domain (two-hop family, held-out phrasings; never in the self-awareness splits)", "",
              *_table(summary, "ood"), "", "## Fact accuracy (greedy) by exposure per corpus pass", "",
              "| tier | " + " | ".join(summary["exposure_buckets"]) + " |",
              "|---|" + "---|" * len(summary["exposure_buckets"])]
    for name, tier in summary["tiers"].items():
        cells = [f"{v['greedy']:.2f} (n={v['n']})" if v["greedy"] is not None else "-" for v in tier["fact_by_exposure"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Disagreement (in-domain, greedy): {json.dumps(summary['disagreement'])}", ""]
    return "\n".join(lines)


def plot(path: Path, summary: dict[str, Any]) -> Path | None:
    """Bars of greedy accuracy per tier and task family; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        return None
    tiers = list(summary["tiers"])
    columns = [("in_domain", "all"), *(("in_domain", f) for f in ("fact", "add")), *(("ood", f) for f in ("two_hop", "phrasing", "add_phrasing"))]
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(tiers)
    for i, tier in enumerate(tiers):
        values = [summary["tiers"][tier]["accuracy"][s].get(g, {}).get("greedy", 0.0) for s, g in columns]
        axis.bar([c + i * width for c in range(len(columns))], values, width, label=f"{tier} (cost {summary['tiers'][tier]['cost']})")
    axis.set_xticks([c + width * (len(tiers) - 1) / 2 for c in range(len(columns))])
    axis.set_xticklabels([f"{'ID' if s == 'in_domain' else 'OOD'} {g}" for s, g in columns], fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel("greedy accuracy")
    axis.legend()
    axis.set_title("Model family: accuracy per tier and task family")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
