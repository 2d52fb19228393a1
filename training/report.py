"""The evaluation report: ``report.json``, ``report.md``, ``eval-rows.jsonl`` and PNG plots in ``out_dir``.

``report.json`` holds, per alpha, the trained model's metrics (``alphas``), the untrained
model prompted with demonstrations (``baseline``, or null), the trivial baselines on the same
test queries (``baselines``: always reject, always answer, random at the trained answer rate,
oracle; see ``baselines.py``), the probe policy at the calibrated thresholds (``probe_policy``),
the calibration file's content with its degenerate thresholds, the verdict (``verdict``: does
the trained model's utility beat each baseline per alpha, does its answer rate move with
alpha), and the caller's ``meta``. The headline figure is utility (``objective.utility``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

import structlog

from disrouter.mesh.objective import reject_reward
from disrouter.node.calibration import Calibration

from .baselines import BASELINES, baseline_metrics
from .calibrate import threshold_metrics
from .evaluate import AlphaMetrics, EvalRow, ModelEval

log = structlog.get_logger("disrouter.training.report")

UTILITY_PLOT = "utility_vs_alpha.png"
REJECT_PLOT = "reject_rate_vs_competence.png"
RELIABILITY_PLOT = "p_reject_reliability.png"
ROWS_FILE = "eval-rows.jsonl"
RELIABILITY_BINS = 10
METRIC_COLUMNS = [
    ("utility", "utility"), ("answer_rate", "answer rate"), ("accuracy_answered", "acc. answered"), ("accuracy_overall", "acc. overall"),
    ("reject_precision", "reject P"), ("reject_recall", "reject R"), ("reject_f1", "reject F1"), ("n", "n"),
]
POLICY_NAMES = {"trained": "trained", "prompted_base": "prompted base (demonstrations)", "always_reject": "always reject",
                "always_answer": "always answer (base)", "random": "random, same answer rate", "oracle": "oracle (base)"}
PRACTICAL = ("prompted_base", "always_reject", "always_answer", "random")
"""The baselines a useful trained model beats; the oracle is the ceiling, shown for scale."""
ANSWER_RATE_MOVE = 0.05
"""The rise in answer rate from the lowest to the highest alpha that counts as moving with alpha."""


def alpha_key(alpha: float) -> str:
    """How an alpha is written as a JSON key: ``0.2``."""
    return f"{alpha:g}"


def _metrics_json(model_eval: ModelEval | None) -> dict[str, dict[str, float | int]] | None:
    if model_eval is None or not model_eval.generated:
        return None
    return {alpha_key(alpha): metrics.to_json() for alpha, metrics in model_eval.metrics().items()}


def auroc(rows: Sequence[EvalRow]) -> float | None:
    """How well P(reject) ranks should-reject queries above the others (0.5 = chance); None without both kinds."""
    scored = [(row.p_reject, row.should_reject) for row in rows if row.p_reject is not None]
    positives = [p for p, label in scored if label]
    negatives = [p for p, label in scored if not label]
    if not positives or not negatives:
        return None
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


def reliability_bins(rows: Sequence[EvalRow], bins: int = RELIABILITY_BINS) -> list[tuple[float, float, int]]:
    """``(mean predicted P(reject), observed should-reject frequency, rows)`` per non-empty bin of P(reject)."""
    grouped: dict[int, list[EvalRow]] = {}
    for row in rows:
        if row.p_reject is not None:
            grouped.setdefault(min(int(row.p_reject * bins), bins - 1), []).append(row)
    return [
        (mean(r.p_reject for r in group), mean(float(r.should_reject) for r in group), len(group))  # type: ignore[misc]
        for _, group in sorted(grouped.items())
    ]


def calibration_error(rows: Sequence[EvalRow], bins: int = RELIABILITY_BINS) -> float | None:
    """Expected calibration error of P(reject) against should_reject (row-weighted gap per bin)."""
    table = reliability_bins(rows, bins)
    total = sum(count for _, _, count in table)
    return sum(count * abs(predicted - observed) for predicted, observed, count in table) / total if total else None


def _probe_policy(trained: ModelEval, calibration: Calibration) -> dict[str, dict[str, Any]]:
    result = {}
    for alpha in trained.alphas:
        rows = [row for row in trained.rows_for(alpha) if row.p_reject is not None]
        if not rows:
            continue
        threshold = calibration.threshold(alpha)
        metrics = threshold_metrics(rows, alpha, threshold, trained.gamma).to_json()
        rejected = reject_reward(alpha, trained.gamma)
        extra = {
            "threshold": threshold, "skip_threshold": calibration.skip_threshold(alpha),
            "auroc": auroc(rows), "ece": calibration_error(rows),
            # the same valuation (an answer is worth its competence) for the trivial policies:
            "always_reject_utility": rejected, "always_answer_utility": mean(row.competence for row in rows),
            "oracle_utility": mean(max(row.competence, rejected) for row in rows),
        }
        result[alpha_key(alpha)] = metrics | {key: None if value is None else round(value, 4) for key, value in extra.items()}
    return result


def policy_metrics(
    trained: ModelEval, baseline: ModelEval | None, base_correct: Mapping[str, bool] | None
) -> dict[float, dict[str, AlphaMetrics]]:
    """Per alpha, every policy's metrics on the test queries: trained, prompted base, the trivial baselines."""
    if not trained.generated:
        return {}
    ours = trained.metrics()
    theirs = baseline.metrics() if baseline is not None and baseline.generated else {}
    result = {}
    for alpha, metrics in ours.items():
        table = {"trained": metrics} | ({"prompted_base": theirs[alpha]} if alpha in theirs else {})
        if base_correct:
            rows = [row for row in trained.rows_for(alpha) if row.rejected is not None]
            table |= baseline_metrics(rows, base_correct, alpha, trained.gamma, metrics.answer_rate)
        result[alpha] = table
    return result


def _answered_by_base(trained: ModelEval, base_correct: Mapping[str, bool] | None) -> dict[str, float | None]:
    """Per alpha, the base model's accuracy on exactly the queries the trained model answered."""
    result: dict[str, float | None] = {}
    for alpha in trained.alphas:
        answered = [row.id for row in trained.rows_for(alpha) if row.rejected is False and base_correct and row.id in base_correct]
        result[alpha_key(alpha)] = round(mean(float(base_correct[i]) for i in answered), 4) if answered and base_correct else None
    return result


def _verdict(policies: dict[float, dict[str, AlphaMetrics]]) -> dict[str, Any] | None:
    """Whether the trained model's utility beats each other policy per alpha, and whether its answer rate moves with alpha."""
    if not policies or len(next(iter(policies.values()))) < 2:
        return None
    per_alpha = {}
    for alpha, table in policies.items():
        ours = table["trained"].utility
        per_alpha[alpha_key(alpha)] = {
            "utility": round(ours, 4), "answer_rate": round(table["trained"].answer_rate, 4),
            "versus": {name: {"utility": round(m.utility, 4), "margin": round(ours - m.utility, 4), "beats": ours > m.utility + 1e-9}
                       for name, m in table.items() if name != "trained"},
        }
    alphas = sorted(policies)
    rates = [policies[alpha]["trained"].answer_rate for alpha in alphas]
    change = rates[-1] - rates[0]
    return {
        "per_alpha": per_alpha,
        "beats_practical_baselines": {alpha_key(a): all(v["beats"] for name, v in per_alpha[alpha_key(a)]["versus"].items() if name in PRACTICAL)
                                      for a in alphas},
        "answer_rate_by_alpha": {alpha_key(a): round(r, 4) for a, r in zip(alphas, rates)},
        "answer_rate_change": round(change, 4),
        "answer_rate_moves_with_alpha": len(rates) > 1 and change >= ANSWER_RATE_MOVE and all(b >= a - 1e-9 for a, b in zip(rates, rates[1:])),
    }


def _base_accuracy(trained: ModelEval) -> float | None:
    """Mean Stage 0 competence of the evaluated queries: the base model's accuracy when it answers everything."""
    competence = {row.id: row.competence for row in trained.rows}
    return round(mean(competence.values()), 4) if competence else None


def write_report(
    out_dir: Path, trained: ModelEval, baseline: ModelEval | None, calibration: Calibration, meta: dict,
    base_correct: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Write report.json, report.md, eval-rows.jsonl and the PNG plots into ``out_dir``; return the report.
    ``base_correct`` (query id -> the base model's plain greedy answer is right) enables the trivial baselines."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    policies = policy_metrics(trained, baseline, base_correct)
    report = {
        "alphas": _metrics_json(trained),
        "baseline": _metrics_json(baseline),
        "baselines": {alpha_key(a): {name: m.to_json() for name, m in table.items() if name in BASELINES} for a, table in policies.items()}
        if base_correct else None,
        "base_accuracy_on_trained_answered": _answered_by_base(trained, base_correct),
        "probe_policy": _probe_policy(trained, calibration),
        "calibration": calibration.model_dump(mode="json"),
        "degenerate_thresholds": {alpha_key(a): t for a, t in calibration.degenerate().items()},
        "verdict": _verdict(policies),
        "base_accuracy": _base_accuracy(trained),
        "models": {"trained": _model_json(trained), "baseline": None if baseline is None else _model_json(baseline)},
        "gamma": trained.gamma,
        "plots": _plots(out_dir, trained, baseline, calibration, policies),
        "meta": meta,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    _write_rows(out_dir / ROWS_FILE, trained, baseline, base_correct)
    log.info("report_written", out=str(out_dir), plots=report["plots"])
    return report


def _model_json(model_eval: ModelEval) -> dict[str, Any]:
    return {key: getattr(model_eval, key) for key in ("model", "demonstrations", "skipped", "seconds")}


def _write_rows(path: Path, trained: ModelEval, baseline: ModelEval | None, base_correct: Mapping[str, bool] | None) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for name, model_eval in (("trained", trained), ("baseline", baseline)):
            for row in model_eval.rows if model_eval is not None else []:
                handle.write(json.dumps({"model": name, **dataclasses.asdict(row), "should_reject": row.should_reject}) + "\n")
        for query, correct in (base_correct or {}).items():
            handle.write(json.dumps({"model": "base_plain", "id": query, "correct": correct}) + "\n")


# --- markdown -----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _signed(value: float) -> str:
    return f"{value:+.3f}"


def _markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = ["# Evaluation report", ""]
    baseline_text = f"`{models['baseline']['model']}` (untrained, prompted with demonstrations)" if models["baseline"] else "not evaluated"
    lines += [
        f"- Trained model: `{models['trained']['model']}` (prompted without demonstrations, as its node prompts)",
        f"- Prompted base: {baseline_text}",
        f"- Held-out (test) queries. Headline: utility = mean reward per query (1 correct, 0 wrong, "
        f"(1 - alpha)^{report['gamma']:g} for a reject). Reject P / R / F1 are diagnostics against the paper's label "
        "(the base model's Stage 0 competence < 1 - alpha).",
        "- Trivial baselines on the same queries: always reject; always answer (the base model's greedy answer to the plain "
        "question); random at the trained model's answer rate (expected value); oracle (answers exactly what the base "
        "model gets right: the ceiling).",
        f"- Base model accuracy when it answers everything (mean Stage 0 competence, sampled): {_fmt(report['base_accuracy'])}",
    ]
    for key, value in report["meta"].items():
        lines.append(f"- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else _fmt(value)}")
    lines += ["", "## Verdict", ""] + _verdict_lines(report)
    lines += ["", "## Per scenario (greedy answers; every policy on the same test queries)", ""] + _metrics_table(report)
    lines += ["", "## Probe policy (reject when P(reject) > calibrated threshold; answered queries worth their competence)", ""]
    lines += _probe_table(report["probe_policy"])
    lines += ["", "## Calibration (chosen on the validation split by utility)", ""] + _calibration_table(report)
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


def _verdict_lines(report: dict[str, Any]) -> list[str]:
    verdict = report["verdict"]
    if verdict is None:
        return ["No baseline was evaluated, so there is no comparison."]
    lines = []
    for alpha, row in verdict["per_alpha"].items():
        beaten = [POLICY_NAMES[name] for name, v in row["versus"].items() if v["beats"]]
        unbeaten = [f"{POLICY_NAMES[name]} ({v['utility']:.3f})" for name, v in row["versus"].items() if not v["beats"]]
        word = "beats every practical baseline" if verdict["beats_practical_baselines"][alpha] else "does NOT beat every practical baseline"
        lines.append(f"- alpha {alpha}: trained utility {row['utility']:.3f} at answer rate {row['answer_rate']:.3f} {word}; "
                     f"beats: {', '.join(beaten) or 'none'}; not beaten: {', '.join(unbeaten) or 'none'}.")
        answered_by_base = report["base_accuracy_on_trained_answered"].get(alpha)
        trained = (report["alphas"] or {}).get(alpha, {})
        if trained.get("accuracy_answered") is not None:
            lines.append(f"  - accuracy when answering: trained {trained['accuracy_answered']:.3f}; the base model on the same "
                         f"queries {_fmt(answered_by_base)}")
    rates = ", ".join(f"{alpha}: {rate:.3f}" for alpha, rate in verdict["answer_rate_by_alpha"].items())
    moves = "moves with alpha" if verdict["answer_rate_moves_with_alpha"] else "does NOT move with alpha"
    lines.append(f"- The trained answer rate {moves} ({rates}; change {_signed(verdict['answer_rate_change'])}, "
                 f"moving means rising by at least {ANSWER_RATE_MOVE} from the lowest to the highest alpha, never falling).")
    if report["degenerate_thresholds"]:
        lines.append(f"- Degenerate probe thresholds (0 rejects everything, 1 answers everything): {report['degenerate_thresholds']}.")
    return lines


def _metrics_table(report: dict[str, Any]) -> list[str]:
    header = "| alpha | policy | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 2)]
    trained, baseline, trivial = report["alphas"] or {}, report["baseline"] or {}, report["baselines"] or {}
    for alpha in trained:
        tables = {"trained": trained[alpha]} | ({"prompted_base": baseline[alpha]} if alpha in baseline else {}) | trivial.get(alpha, {})
        for name, figures in tables.items():
            lines.append(f"| {alpha} | {POLICY_NAMES[name]} | " + " | ".join(_fmt(figures[key]) for key, _ in METRIC_COLUMNS) + " |")
    return lines if trained else ["No answers were generated."]


def _probe_table(probe: dict[str, dict[str, Any]]) -> list[str]:
    if not probe:
        return ["No P(reject) was measured (the backend cannot score continuations)."]
    keys = [("threshold", "threshold"), ("skip_threshold", "skip"), ("answer_rate", "answer rate"), ("reject_precision", "reject P"),
            ("reject_recall", "reject R"), ("reject_f1", "reject F1"), ("utility", "expected utility"),
            ("always_reject_utility", "always reject"), ("always_answer_utility", "always answer"), ("oracle_utility", "oracle"),
            ("auroc", "AUROC"), ("ece", "ECE")]
    lines = ["| alpha | " + " | ".join(label for _, label in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {alpha} | " + " | ".join(_fmt(row[key]) for key, _ in keys) + " |" for alpha, row in probe.items()]
    return lines


def _calibration_table(report: dict[str, Any]) -> list[str]:
    calibration, degenerate = report["calibration"], report["degenerate_thresholds"]
    lines = ["| alpha | reject threshold | skip threshold | degenerate |", "|---|---|---|---|"]
    for alpha, threshold in calibration["thresholds"].items():
        flag = "" if alpha not in degenerate else ("yes: rejects everything" if threshold == 0.0 else "yes: answers everything")
        lines.append(f"| {alpha} | {threshold:.4f} | {_fmt(calibration['skip_thresholds'].get(alpha))} | {flag or 'no'} |")
    demonstrations = str(calibration["demonstrations"]).lower()
    lines += ["", f"demonstrations: {demonstrations} (written to the model folder as the node's calibration file)"]
    return lines


# --- plots --------------------------------------------------------------------------------------


def _competence_bins(rows: Sequence[EvalRow]) -> list[tuple[float, float]]:
    """``(mean competence, reject rate)`` per competence value (or per tenth, when values are many)."""
    answered = [row for row in rows if row.rejected is not None]
    distinct = {row.competence for row in answered}
    key = (lambda c: c) if len(distinct) <= 11 else (lambda c: min(int(c * 10), 9))
    grouped: dict[float, list[EvalRow]] = {}
    for row in answered:
        grouped.setdefault(key(row.competence), []).append(row)
    return [(mean(r.competence for r in group), mean(float(bool(r.rejected)) for r in group)) for _, group in sorted(grouped.items())]


def _utility_plot(out_dir: Path, policies: dict[float, dict[str, AlphaMetrics]]) -> list[str]:
    """Utility and answer rate against alpha, one line per policy."""
    from matplotlib.figure import Figure

    if not policies:
        return []
    alphas = sorted(policies)
    figure = Figure(figsize=(10, 4.6))
    panels = figure.subplots(1, 2)
    for axes, key, label in zip(panels, ("utility", "answer_rate"), ("utility (mean reward)", "answer rate")):
        for i, name in enumerate(POLICY_NAMES):
            if all(name in policies[alpha] for alpha in alphas):
                values = [getattr(policies[alpha][name], key) for alpha in alphas]
                axes.plot(alphas, values, marker="o", color=f"C{i}", linewidth=2.5 if name == "trained" else 1,
                          linestyle="-" if name == "trained" else "--", label=POLICY_NAMES[name])
        axes.set(xlabel="alpha (weight of cost)", ylabel=label, xticks=alphas, ylim=(-0.02, 1.02))
    figure.legend(*panels[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize="small")
    figure.suptitle("Trained model against the baselines on the test queries", fontsize="medium")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(out_dir / UTILITY_PLOT, dpi=110)
    return [UTILITY_PLOT]


def _plots(
    out_dir: Path, trained: ModelEval, baseline: ModelEval | None, calibration: Calibration, policies: dict[float, dict[str, AlphaMetrics]]
) -> list[str]:
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global backend state

    evals = [("trained", trained, "-"), *([("baseline", baseline, "--")] if baseline is not None else [])]  # (name, eval, line style)
    colours = {alpha: f"C{i}" for i, alpha in enumerate(trained.alphas)}
    written = _utility_plot(out_dir, policies)
    generated = [(name, model_eval) for name, model_eval, _ in evals if model_eval.generated]
    if generated:
        figure = Figure(figsize=(5 * len(generated), 4.2))
        panels = figure.subplots(1, len(generated), squeeze=False, sharey=True)[0]
        for axes, (name, model_eval) in zip(panels, generated):
            for alpha in model_eval.alphas:
                points = _competence_bins(model_eval.rows_for(alpha))
                if points:
                    axes.plot(*zip(*points), marker="o", color=colours.get(alpha, "k"), label=f"alpha {alpha:g}")
                axes.axvline(1 - alpha, color=colours.get(alpha, "k"), linestyle=":", linewidth=1)
            axes.set(xlabel="Stage 0 competence of the base model", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
                     title=f"{name} ({'with' if model_eval.demonstrations else 'no'} demonstrations)")
            axes.legend(fontsize="small")
        panels[0].set_ylabel("reject rate")
        figure.suptitle("Reject rate against competence (dotted: 1 - alpha; reject left of it)", fontsize="medium")
        figure.tight_layout()
        figure.savefig(out_dir / REJECT_PLOT, dpi=110)
        written.append(REJECT_PLOT)
    if any(row.p_reject is not None for _, model_eval, _ in evals for row in model_eval.rows):
        figure = Figure(figsize=(4 * len(trained.alphas), 4))
        panels = figure.subplots(1, len(trained.alphas), squeeze=False)[0]
        for axes, alpha in zip(panels, trained.alphas):
            axes.plot([0, 1], [0, 1], color="grey", linewidth=1, label="perfectly calibrated")
            for name, model_eval, style in evals:
                table = reliability_bins(model_eval.rows_for(alpha))
                if table:
                    predicted, observed, counts = zip(*table)
                    axes.plot(predicted, observed, style, color=colours[alpha], linewidth=1)
                    axes.scatter(predicted, observed, s=[12 + 4 * math.sqrt(c) for c in counts], color=colours[alpha],
                                 marker="o" if name == "trained" else "s", label=name)
            axes.axvline(calibration.threshold(alpha), color="black", linestyle=":", linewidth=1, label="calibrated threshold")
            axes.set(xlabel="predicted P(reject)", ylabel="observed should-reject frequency", xlim=(0, 1), ylim=(-0.02, 1.02),
                     title=f"alpha {alpha:g}")
            axes.legend(fontsize="x-small")
        figure.tight_layout()
        figure.savefig(out_dir / RELIABILITY_PLOT, dpi=110)
        written.append(RELIABILITY_PLOT)
    return written
