"""The evaluation report: ``report.json``, ``report.md``, ``eval-rows.jsonl`` and PNG plots in ``out_dir``.

``report.json`` holds per-alpha metrics of the trained model (``alphas``) and the untrained,
prompted baseline (``baseline``, or null), the probe policy's decisions at the calibrated
thresholds on the same test queries (``probe_policy``), the calibration file's content, the
verdict issue 4 asks for, and the caller's ``meta``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

import structlog

from disrouter.node.calibration import Calibration

from .calibrate import threshold_metrics
from .evaluate import EvalRow, ModelEval

log = structlog.get_logger("disrouter.training.report")

REJECT_PLOT = "reject_rate_vs_competence.png"
RELIABILITY_PLOT = "p_reject_reliability.png"
ROWS_FILE = "eval-rows.jsonl"
RELIABILITY_BINS = 10
METRIC_COLUMNS = [
    ("n", "n"), ("answer_rate", "answer rate"), ("accuracy_answered", "acc. answered"), ("accuracy_overall", "acc. overall"),
    ("reject_precision", "reject P"), ("reject_recall", "reject R"), ("reject_f1", "reject F1"), ("utility", "utility"),
]


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
        extra = {
            "threshold": threshold, "skip_threshold": calibration.skip_threshold(alpha),
            "auroc": auroc(rows), "ece": calibration_error(rows),
        }
        result[alpha_key(alpha)] = metrics | {key: None if value is None else round(value, 4) for key, value in extra.items()}
    return result


def _verdict(trained: ModelEval, baseline: ModelEval | None) -> dict[str, Any] | None:
    """Trained reject F1 against the baseline's, and trained accuracy when answering against the baseline's overall accuracy."""
    if baseline is None or not trained.generated or not baseline.generated:
        return None
    ours, theirs = trained.metrics(), baseline.metrics()
    alphas = [alpha for alpha in trained.alphas if alpha in theirs]
    per_alpha = {}
    for alpha in alphas:
        f1, f1_base = ours[alpha].reject_f1, theirs[alpha].reject_f1
        acc, acc_base = ours[alpha].accuracy_answered, theirs[alpha].accuracy_overall
        per_alpha[alpha_key(alpha)] = {
            "reject_f1": round(f1, 4), "baseline_reject_f1": round(f1_base, 4), "reject_f1_delta": round(f1 - f1_base, 4),
            "accuracy_answered": round(acc, 4), "baseline_accuracy_overall": round(acc_base, 4), "accuracy_delta": round(acc - acc_base, 4),
        }
    f1_mean = mean(ours[a].reject_f1 for a in alphas)
    f1_base_mean = mean(theirs[a].reject_f1 for a in alphas)
    acc_mean = mean(ours[a].accuracy_answered for a in alphas)
    acc_base_mean = mean(theirs[a].accuracy_overall for a in alphas)
    return {
        "reject_f1_beats_baseline": f1_mean > f1_base_mean,
        "reject_f1_mean": round(f1_mean, 4), "baseline_reject_f1_mean": round(f1_base_mean, 4),
        "reject_f1_delta": round(f1_mean - f1_base_mean, 4),
        "accuracy_answered_beats_baseline_overall": acc_mean > acc_base_mean,
        "accuracy_answered_mean": round(acc_mean, 4), "baseline_accuracy_overall_mean": round(acc_base_mean, 4),
        "accuracy_delta": round(acc_mean - acc_base_mean, 4),
        "per_alpha": per_alpha,
    }


def _base_accuracy(trained: ModelEval) -> float | None:
    """Mean Stage 0 competence of the evaluated queries: the base model's accuracy when it answers everything."""
    competence = {row.id: row.competence for row in trained.rows}
    return round(mean(competence.values()), 4) if competence else None


def write_report(out_dir: Path, trained: ModelEval, baseline: ModelEval | None, calibration: Calibration, meta: dict) -> None:
    """Write report.json, report.md, eval-rows.jsonl and the PNG plots into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(out_dir, trained, baseline, calibration)
    report = {
        "alphas": _metrics_json(trained),
        "baseline": _metrics_json(baseline),
        "probe_policy": _probe_policy(trained, calibration),
        "calibration": calibration.model_dump(mode="json"),
        "verdict": _verdict(trained, baseline),
        "base_accuracy": _base_accuracy(trained),
        "models": {"trained": _model_json(trained), "baseline": None if baseline is None else _model_json(baseline)},
        "gamma": trained.gamma,
        "plots": plots,
        "meta": meta,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    _write_rows(out_dir / ROWS_FILE, trained, baseline)
    log.info("report_written", out=str(out_dir), plots=plots)


def _model_json(model_eval: ModelEval) -> dict[str, Any]:
    return {key: getattr(model_eval, key) for key in ("model", "demonstrations", "skipped", "seconds")}


def _write_rows(path: Path, trained: ModelEval, baseline: ModelEval | None) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for name, model_eval in (("trained", trained), ("baseline", baseline)):
            for row in model_eval.rows if model_eval is not None else []:
                handle.write(json.dumps({"model": name, **dataclasses.asdict(row), "should_reject": row.should_reject}) + "\n")


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
        f"- Baseline: {baseline_text}",
        f"- Held-out (test) queries; a reject is right when the base model's Stage 0 competence < 1 - alpha; "
        f"utility = mean reward (1 correct, 0 wrong, (1 - alpha)^{report['gamma']:g} reject).",
        f"- Base model accuracy when it answers everything (mean Stage 0 competence, sampled): {_fmt(report['base_accuracy'])}",
    ]
    for key, value in report["meta"].items():
        lines.append(f"- {key}: {json.dumps(value) if isinstance(value, (dict, list)) else _fmt(value)}")
    lines += ["", "## Verdict", ""] + _verdict_lines(report["verdict"])
    lines += ["", "## Per scenario (greedy answers under the scenario instruction)", ""] + _metrics_table(report)
    lines += ["", "## Probe policy (reject when P(reject) > calibrated threshold; answered queries worth their competence)", ""]
    lines += _probe_table(report["probe_policy"])
    lines += ["", "## Calibration (chosen on the validation split)", ""] + _calibration_table(report["calibration"])
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in report["plots"]]
    return "\n".join(lines) + "\n"


def _verdict_lines(verdict: dict[str, Any] | None) -> list[str]:
    if verdict is None:
        return ["No baseline was evaluated, so there is no comparison."]
    f1_word = "beats" if verdict["reject_f1_beats_baseline"] else "does NOT beat"
    acc_word = "is higher than" if verdict["accuracy_answered_beats_baseline_overall"] else "is NOT higher than"
    lines = [
        f"- Reject F1 (mean over alphas): trained {verdict['reject_f1_mean']:.3f} {f1_word} the baseline's "
        f"{verdict['baseline_reject_f1_mean']:.3f} ({_signed(verdict['reject_f1_delta'])}).",
        f"- Accuracy when answering (mean over alphas): trained {verdict['accuracy_answered_mean']:.3f} {acc_word} the baseline's "
        f"overall accuracy {verdict['baseline_accuracy_overall_mean']:.3f} ({_signed(verdict['accuracy_delta'])}).",
    ]
    for alpha, row in verdict["per_alpha"].items():
        lines.append(
            f"- alpha {alpha}: reject F1 {row['reject_f1']:.3f} vs {row['baseline_reject_f1']:.3f} ({_signed(row['reject_f1_delta'])}); "
            f"accuracy answered {row['accuracy_answered']:.3f} vs baseline overall {row['baseline_accuracy_overall']:.3f} "
            f"({_signed(row['accuracy_delta'])})"
        )
    return lines


def _metrics_table(report: dict[str, Any]) -> list[str]:
    header = "| alpha | model | " + " | ".join(label for _, label in METRIC_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(METRIC_COLUMNS) + 2)]
    trained, baseline = report["alphas"] or {}, report["baseline"] or {}
    for alpha in trained:
        for name, table in (("trained", trained), ("baseline", baseline)):
            if alpha in table:
                lines.append(f"| {alpha} | {name} | " + " | ".join(_fmt(table[alpha][key]) for key, _ in METRIC_COLUMNS) + " |")
    return lines if trained else ["No answers were generated."]


def _probe_table(probe: dict[str, dict[str, Any]]) -> list[str]:
    if not probe:
        return ["No P(reject) was measured (the backend cannot score continuations)."]
    keys = [("threshold", "threshold"), ("skip_threshold", "skip"), ("answer_rate", "answer rate"), ("reject_precision", "reject P"),
            ("reject_recall", "reject R"), ("reject_f1", "reject F1"), ("utility", "expected utility"), ("auroc", "AUROC"), ("ece", "ECE")]
    lines = ["| alpha | " + " | ".join(label for _, label in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    lines += [f"| {alpha} | " + " | ".join(_fmt(row[key]) for key, _ in keys) + " |" for alpha, row in probe.items()]
    return lines


def _calibration_table(calibration: dict[str, Any]) -> list[str]:
    lines = ["| alpha | reject threshold | skip threshold |", "|---|---|---|"]
    for alpha, threshold in calibration["thresholds"].items():
        lines.append(f"| {alpha} | {threshold:.4f} | {_fmt(calibration['skip_thresholds'].get(alpha))} |")
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


def _plots(out_dir: Path, trained: ModelEval, baseline: ModelEval | None, calibration: Calibration) -> list[str]:
    from matplotlib.figure import Figure  # the object API draws with Agg and touches no global backend state

    evals = [("trained", trained, "-"), *([("baseline", baseline, "--")] if baseline is not None else [])]  # (name, eval, line style)
    colours = {alpha: f"C{i}" for i, alpha in enumerate(trained.alphas)}
    written = []
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
