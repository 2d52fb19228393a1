"""The benchmark's output files: results.json (rows, meta), results.md (tables) and PNG plots."""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .headline import CENTRALIZED
from .uncertainty import REFERENCE, RESAMPLES, verdict

METHODS = (
    "oracle", "smallest", "largest", "random", "knn", "mlp", "cascade",
    "untrained_generate", "untrained_probe", "untrained_confidence", "sft_generate", "sft_probe", "sftrl_generate", "sftrl_probe",
)
"""Every method, in the order tables and plots list them."""


def meta(started: datetime, elapsed_s: float, preset: str) -> dict[str, Any]:
    """Where and how the results were made: commit, date, machine, command."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    import torch

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}, Python {platform.python_version()}",
        "accelerator": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "command": " ".join(["disrouter", *sys.argv[1:]]) if Path(sys.argv[0]).name == "disrouter" else " ".join(sys.argv),
        "preset": preset,
        "elapsed_s": round(elapsed_s, 1),
    }


def write_json(out: Path, payload: dict[str, Any]) -> None:
    """results.json: everything in the payload but the local output path."""
    (out / "results.json").write_text(json.dumps({k: v for k, v in payload.items() if k != "out"}, indent=2) + "\n")


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(r["split"], r["pool"]) for r in rows}, key=lambda g: (g[0] != "in_domain", g[1] != "all"))


def markdown(payload: dict[str, Any]) -> str:
    """Utility per alpha per method for each (split, pool), then every figure."""
    rows, m = payload["rows"], payload["meta"]
    alphas = sorted({r["alpha"] for r in rows})
    lines = [
        f"# Routing quality ({m['preset']} preset)", "",
        f"`{m['command']}` at commit `{m['commit']}`{' (with local changes)' if m['dirty'] else ''}, {m['date']}, "
        f"on {m['machine']}{'; ' + m['accelerator'] if m['accelerator'] else ''}; {m['elapsed_s']} s.", "",
        "utility = accuracy - alpha * cost (cost: the answering tier's, as in the paper); "
        "full utility charges the compute of rejecting hops and cascade steps too.", "",
    ]
    if payload.get("headline"):
        lines += ["## Headline", "", "Cost saving against Largest-only at the measured alpha where a method keeps at least "
                  f"{payload['headline']['keep']:.0%} of Largest-only's accuracy (in-domain, all tiers):", "", f"**{payload['headline']['line']}**", ""]
    for split, pool in _groups(rows):
        group = [r for r in rows if r["split"] == split and r["pool"] == pool]
        lines += [f"## {split}, pool `{pool}`", "",
                  "| method | " + " | ".join(f"utility a={a:g}" for a in alphas) + " | " + " | ".join(f"full utility a={a:g}" for a in alphas) + " |",
                  "|---" * (1 + 2 * len(alphas)) + "|"]
        for method in METHODS:
            cells = {r["alpha"]: r for r in group if r["method"] == method}
            if not cells:
                continue
            if all(r["status"] != "ok" for r in cells.values()):
                lines.append(f"| {method} | " + " | ".join([next(iter(cells.values()))["status"]] * (2 * len(alphas))) + " |")
                continue
            lines.append(f"| {method} | " + " | ".join(_num(cells.get(a, {}).get("utility")) for a in alphas) + " | "
                         + " | ".join(_num(cells.get(a, {}).get("full_utility")) for a in alphas) + " |")
        lines.append("")
    lines += comparisons_section(payload.get("comparisons"))
    lines += ["## Every figure", "",
              "| split | pool | alpha | method | n | accuracy | cost | full cost | utility | full utility | p50 ms | p95 ms | hops | share by tier | errors |",
              "|---" * 15 + "|"]
    for r in rows:
        if r["status"] != "ok":
            continue
        share = ", ".join(f"{k} {v:.2f}" for k, v in r["share_by_tier"].items())
        lines.append(f"| {r['split']} | {r['pool']} | {r['alpha']:g} | {r['method']} | {r['n']} | " + " | ".join(
            _num(r[k]) for k in ("accuracy", "cost", "full_cost", "utility", "full_utility")) + " | "
            + f"{_num(r['latency_ms_p50'], 0)} | {_num(r['latency_ms_p95'], 0)} | {_num(r['hops'], 2)} | {share} | {r['errors']} |")
    join = payload.get("runtime_join")
    if join:
        lines += ["", "## Runtime join", "", f"Tier `{join['tier']}` started while `{join['method']}` served queries at alpha {join['alpha']:g}: "
                  f"registered after {join['registered_after_s']} s; of {join['queries_after']} queries sent after that, "
                  f"{join['reached_after']} passed through it and {join['answered_after']} were answered by it "
                  f"({join['reached_while_starting']} of {join['queries_while_starting']} sent while it was starting reached it)."]
    return "\n".join(lines) + "\n"


def comparisons_section(comparisons: Sequence[dict[str, Any]] | None) -> list[str]:
    """The paired-bootstrap comparisons (``uncertainty.annotate``): difference, its 95% interval, P(better), verdict."""
    lines = [f"## Is the difference real? (paired bootstrap, {RESAMPLES} resamples)", ""]
    if comparisons is None:
        return lines + ["Not in this results.json (made before the comparisons existed): rerun the benchmark.", ""]
    lines += [
        "Each DiSRouter probe arm against the best centralized router at that alpha (by utility among "
        f"{', '.join(CENTRALIZED)}, picked on these same queries, which favours it) and against `{REFERENCE}`: utility "
        "difference (method - baseline) on the n queries both answered, its 95% percentile interval over resamples of "
        "the queries (the same draws for every method, so the difference is paired), and P(better), the share of "
        "resamples in which the method's utility is higher. An interval that contains 0 is within noise at this n.", "",
        "| split | pool | alpha | method | baseline | n | difference | 95% CI | P(better) | verdict |", "|---" * 10 + "|",
    ]
    for c in comparisons:
        lines.append(f"| {c['split']} | {c['pool']} | {c['alpha']:g} | {c['method']} | {c['baseline']} | {c['n']} | {c['difference']:+.3f} | "
                     f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | {c['p_better']:.2f} | {verdict(c['ci95'])} |")
    if not comparisons:
        lines.append("| no DiSRouter probe arm measured | | | | | | | | | |")
    return lines + [""]


def plots(out: Path, rows: Sequence[dict[str, Any]], frontiers: dict[tuple[str, str], list[tuple[float, float]]]) -> list[str]:
    """utility.png (utility per alpha per method) and accuracy_cost.png (with the oracle frontier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _groups([r for r in rows if r["status"] == "ok"])
    splits = sorted({g[0] for g in groups}, key=lambda s: s != "in_domain")
    pools = sorted({g[1] for g in groups}, key=lambda p: p != "all")
    written = []
    for name, draw in (("utility.png", _utility_panel), ("accuracy_cost.png", _accuracy_cost_panel)):
        figure, axes = plt.subplots(len(splits), len(pools), figsize=(6 * len(pools) + 2, 4.5 * len(splits)), squeeze=False)
        for (i, split), (j, pool) in itertools.product(enumerate(splits), enumerate(pools)):
            draw(axes[i][j], [r for r in rows if r["split"] == split and r["pool"] == pool and r["status"] == "ok"], frontiers.get((split, pool), []))
            axes[i][j].set_title(f"{split}, pool {pool}")
        axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        written.append(name)
    return written


def _style(method: str) -> dict[str, Any]:
    """One colour per method; routers dashed, self-routing solid."""
    import matplotlib.pyplot as plt

    return {"color": plt.get_cmap("tab20")(METHODS.index(method) / len(METHODS)), "label": method}


def _utility_panel(axis, rows, frontier) -> None:  # noqa: ANN001
    for method in METHODS:
        points = sorted((r["alpha"], r["utility"]) for r in rows if r["method"] == method)
        if points:
            axis.plot(*zip(*points), marker="o", linestyle="--" if method in METHODS[:7] else "-", **_style(method))
    axis.set_xlabel("alpha")
    axis.set_ylabel("utility (accuracy - alpha * cost)")


def _accuracy_cost_panel(axis, rows, frontier) -> None:  # noqa: ANN001
    if frontier:
        axis.plot(*zip(*frontier), color="black", linewidth=1, label="oracle frontier")
    for method in METHODS:
        points = [(r["cost"], r["accuracy"]) for r in rows if r["method"] == method]
        if points:
            axis.scatter(*zip(*points), s=22, marker="x" if method in METHODS[:7] else "o", **_style(method))
    axis.set_xlabel("cost (answering tier)")
    axis.set_ylabel("accuracy")
