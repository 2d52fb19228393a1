"""Evaluation, calibration and the report: metric math, threshold choice, files, and a real model."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from disrouter.node.backends import Backend, Generation, GenerationRequest, PromptTooLongError
from disrouter.node.calibration import CALIBRATION_FILENAME, load_calibration
from disrouter.node.prompts import REJECT_PHRASE
from disrouter.training.calibrate import calibrate, candidate_thresholds, choose_thresholds, threshold_metrics, write_calibration
from disrouter.training.config import TrainingConfigError
from disrouter.mesh.objective import should_reject
from disrouter.training.evaluate import AlphaMetrics, EvalRow, EvalStageConfig, ModelEval, alpha_metrics, base_answers, evaluate_model
from disrouter.training.probe import ProbeRecord
from disrouter.training.baselines import baseline_metrics
from disrouter.training.report import RELIABILITY_PLOT, REJECT_PLOT, ROWS_FILE, UTILITY_PLOT, _verdict, auroc, write_report
from disrouter.training.tasks import Task

HALF = math.sqrt(0.5)  # the reward of a reject at alpha 0.5, gamma 0.5


def row(
    competence: float, rejected: bool | None, correct: bool | None = False, p: float | None = None, alpha: float = 0.5, id: str = "q"  # noqa: A002
) -> EvalRow:
    return EvalRow(id=id, alpha=alpha, competence=competence, rejected=rejected, correct=correct, p_reject=p)


# --- metric math ----------------------------------------------------------------------------------


def test_metrics_on_hand_made_rows() -> None:
    rows = [
        row(0.0, rejected=True),  # right reject
        row(0.25, rejected=False, correct=False),  # should have rejected
        row(1.0, rejected=False, correct=True),
        row(0.75, rejected=True),  # wrong reject
        row(0.5, rejected=False, correct=True),  # boundary: answering is right
        row(0.125, rejected=True),  # right reject
        row(0.0, rejected=True, alpha=0.8),  # another scenario: ignored
    ]
    m = alpha_metrics(rows, 0.5, gamma=0.5)
    assert m.n == 6
    assert m.answer_rate == pytest.approx(0.5)
    assert m.accuracy_answered == pytest.approx(2 / 3)
    assert m.accuracy_overall == pytest.approx(2 / 6)
    assert m.reject_precision == pytest.approx(2 / 3)
    assert m.reject_recall == pytest.approx(2 / 3)
    assert m.reject_f1 == pytest.approx(2 / 3)
    assert m.utility == pytest.approx((2 + 3 * HALF) / 6)


def test_metrics_with_empty_denominators_are_zero_and_nothing_answered_has_no_accuracy() -> None:
    never = alpha_metrics([row(1.0, False, True), row(0.0, False, False)], 0.5)
    assert (never.reject_precision, never.reject_recall, never.reject_f1) == (0.0, 0.0, 0.0)
    assert never.answer_rate == 1.0 and never.utility == pytest.approx(0.5)
    always = alpha_metrics([row(0.0, True, alpha=0.8), row(0.1, True, alpha=0.8)], 0.8, gamma=0.5)
    assert always.accuracy_answered is None and always.reject_f1 == 1.0
    assert always.utility == pytest.approx(0.2**0.5)
    assert alpha_metrics([], 0.5).n == 0


def test_eval_config_refuses_unknown_keys_and_bad_values() -> None:
    assert EvalStageConfig.from_dict({"alphas": [0.2, 0.8], "max_tokens": 16}).alphas == [0.2, 0.8]
    assert EvalStageConfig.from_dict(None).alphas == [0.2, 0.5, 0.8]
    for bad in ({"alpha": [0.5]}, {"alphas": [1.5]}, {"alphas": ["x"]}, {"max_tokens": 0}, {"backend": "nope"}):
        with pytest.raises(TrainingConfigError):
            EvalStageConfig.from_dict(bad)


# --- calibration ---------------------------------------------------------------------------------


def _val_rows() -> list[EvalRow]:
    """Three should-reject rows (p 0.9, 0.8, 0.6) and three others (p 0.7, 0.3, 0.1), at alpha 0.5.

    Rejecting above 0.45 gets the best F1 (3 of 4 right, all found: 6/7), but every competence
    here but one is below the reward of a reject (0.707), so rejecting everything pays most."""
    good, bad = [(0.0, 0.9), (0.25, 0.8), (0.125, 0.6)], [(1.0, 0.7), (0.75, 0.3), (0.5, 0.1)]
    return [row(c, None, None, p, id=f"v{i}") for i, (c, p) in enumerate(good + bad)]


def test_candidates_are_midpoints_and_the_ends() -> None:
    assert candidate_thresholds([0.3, 0.1, 0.3, 0.7]) == pytest.approx([0.0, 0.2, 0.5, 1.0])


def test_calibrate_picks_the_utility_maximising_threshold_not_the_f1_one() -> None:
    choice = choose_thresholds(_val_rows(), 0.5, min_skip_support=1)
    f1_best = threshold_metrics(_val_rows(), 0.5, 0.45)
    assert f1_best.reject_f1 == pytest.approx(6 / 7) and f1_best.utility == pytest.approx((4 * HALF + 0.75 + 0.5) / 6)
    assert choice.threshold == 0.0 and choice.metrics.utility == pytest.approx(HALF) and HALF > f1_best.utility
    assert choice.skip_threshold == pytest.approx(0.75)  # the smallest with every reject right
    with capture_logs() as logs:
        calibration = calibrate(_val_rows(), [0.5])  # default support of 5 rejects: no skip threshold found
    assert calibration.thresholds == {0.5: 0.0} and calibration.degenerate() == {0.5: 0.0}
    assert calibration.skip_thresholds == {0.5: pytest.approx(0.95)}
    assert calibration.demonstrations is False
    assert [entry["alpha"] for entry in logs if entry["event"] == "calibration_degenerate_threshold"] == [0.5]


def test_calibrate_picks_an_inner_threshold_when_it_pays() -> None:
    rows = [row(c, None, None, p, id=f"w{i}") for i, (c, p) in enumerate([(1.0, 0.1), (0.9, 0.2), (0.75, 0.6), (0.0, 0.8), (0.25, 0.9)])]
    choice = choose_thresholds(rows, 0.5)
    assert choice.threshold == pytest.approx(0.7)  # rejects the 0 and 0.25 rows, answers the 0.75 one (worth more than 0.707)
    assert choice.metrics.utility == pytest.approx((2 * HALF + 1.0 + 0.9 + 0.75) / 5)


def test_rejecting_pays_when_its_reward_beats_the_competence() -> None:
    # Nothing should be rejected by the label; rejecting the 0.6-competence query pays 0.707 instead
    # of 0.6 in expectation, rejecting the 0.9 one would cost.
    rows = [row(0.6, None, None, 0.2, id="a"), row(0.9, None, None, 0.1, id="b")]
    assert choose_thresholds(rows, 0.5).threshold == pytest.approx(0.15)


def test_the_node_warns_about_degenerate_thresholds(tmp_path: Path) -> None:
    path = tmp_path / CALIBRATION_FILENAME
    path.write_text(json.dumps({"thresholds": {"0.2": 0.0, "0.5": 0.4, "0.8": 1.0}}))
    with capture_logs() as logs:
        loaded = load_calibration(path)
    [warning] = [entry for entry in logs if entry["event"] == "calibration_degenerate_thresholds"]
    assert warning["log_level"] == "warning" and warning["thresholds"] == {0.2: 0.0, 0.8: 1.0} == loaded.degenerate()
    path.write_text(json.dumps({"thresholds": {"0.5": 0.4}}))
    with capture_logs() as logs:
        load_calibration(path)
    assert not logs


def test_calibrate_needs_scored_rows() -> None:
    with pytest.raises(TrainingConfigError, match="alpha 0.2"):
        calibrate(_val_rows(), [0.5, 0.2])


def test_calibration_file_round_trips(tmp_path: Path) -> None:
    rows = _val_rows() + [EvalRow(r.id, 0.2, r.competence, None, None, r.p_reject) for r in _val_rows()]
    evaluation = ModelEval("m", False, [0.2, 0.5], 0.5, rows)
    calibration = calibrate(evaluation, [0.2, 0.5])
    path = write_calibration(calibration, tmp_path)
    assert path == tmp_path / CALIBRATION_FILENAME
    loaded = load_calibration(None, tmp_path)
    assert loaded.thresholds == calibration.thresholds and loaded.skip_thresholds == calibration.skip_thresholds
    assert loaded.demonstrations is False and loaded.policy == "probe"  # thresholds on P(reject phrase): a probe node's
    assert loaded.threshold(0.5) == pytest.approx(calibration.thresholds[0.5])
    assert set(json.loads(path.read_text())["thresholds"]) == {"0.2", "0.5"}


# --- report --------------------------------------------------------------------------------------


def _model_eval(name: str, alphas: list[float], demonstrations: bool, sharp: bool) -> ModelEval:
    """Rows for 12 queries of competence 0..1; a ``sharp`` model rejects exactly the should-reject ones."""
    rows = []
    for alpha in alphas:
        for i in range(12):
            competence = i / 11
            label = should_reject(competence, alpha)
            rejected = label if sharp else i % 3 == 0
            p = (0.9 if label else 0.1) if sharp else 0.5
            rows.append(EvalRow(f"q{i}", alpha, competence, rejected, (not rejected) and competence > 0.5, p, "text"))
    return ModelEval(name, demonstrations, alphas, 0.5, rows)


def test_report_writes_json_markdown_and_plots(tmp_path: Path) -> None:
    alphas = [0.2, 0.8]
    trained, baseline = _model_eval("trained", alphas, False, True), _model_eval("base", alphas, True, False)
    base_correct = {f"q{i}": i / 11 > 0.5 for i in range(12)}  # the base model gets the competent half right
    calibration = calibrate(trained, alphas)
    report = write_report(tmp_path, trained, baseline, calibration, {"base_model": "base", "queries": {"test": 12}}, base_correct)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report, default=str))
    metric_keys = {"reject_f1", "answer_rate", "accuracy_answered", "accuracy_overall", "utility", "reject_precision", "reject_recall", "n"}
    assert set(report["alphas"]) == set(report["baseline"]) == set(report["baselines"]) == {"0.2", "0.8"}
    for table in (report["alphas"], report["baseline"], *report["baselines"].values()):
        assert all(metric_keys <= set(metrics) for metrics in table.values())
    assert set(report["baselines"]["0.2"]) == {"always_reject", "always_answer", "random", "oracle"}
    assert report["alphas"]["0.2"]["reject_f1"] == 1.0
    assert report["calibration"]["demonstrations"] is False and report["meta"]["base_model"] == "base"
    assert report["probe_policy"]["0.8"]["auroc"] == 1.0
    markdown = (tmp_path / "report.md").read_text()
    assert "## Verdict" in markdown and "| 0.2 | always reject |" in markdown and "| 0.8 | oracle (base) |" in markdown
    for plot in (UTILITY_PLOT, REJECT_PLOT, RELIABILITY_PLOT):
        assert f"]({plot})" in markdown and (tmp_path / plot).stat().st_size > 1000
    assert len((tmp_path / ROWS_FILE).read_text().splitlines()) == 48 + 12


def test_baselines_on_hand_made_rows() -> None:
    # Four queries at alpha 0.5; the base model gets q0 and q1 right; the trained model answers q0 and q2.
    rows = [row(1.0, False, True, id="q0"), row(0.75, True, id="q1"), row(0.0, False, False, id="q2"), row(0.0, True, id="q3")]
    correct = {"q0": True, "q1": True, "q2": False, "q3": False}
    table = baseline_metrics(rows, correct, 0.5, 0.5, answer_rate=0.5)
    assert table["always_reject"].utility == pytest.approx(HALF) and table["always_reject"].accuracy_answered is None
    assert table["always_answer"].utility == pytest.approx(0.5) and table["always_answer"].accuracy_answered == 0.5
    assert table["oracle"].utility == pytest.approx((2 + 2 * HALF) / 4) and table["oracle"].accuracy_answered == 1.0
    assert table["random"].answer_rate == 0.5 and table["random"].accuracy_answered == 0.5
    assert table["random"].utility == pytest.approx(0.5 * 0.5 + 0.5 * HALF)
    assert table["random"].reject_recall == pytest.approx(0.5)  # of the two should-reject queries, half in expectation


def _policies(utilities: dict[float, dict[str, float]], rates: dict[float, float]) -> dict:
    return {alpha: {name: AlphaMetrics(4, rates[alpha] if name == "trained" else 0.5, None, 0.0, 0.0, 0.0, 0.0, u)
                    for name, u in table.items()} for alpha, table in utilities.items()}


def test_the_verdict_compares_utility_per_alpha_and_checks_the_answer_rate_moves() -> None:
    utilities = {0.2: {"trained": 0.9, "always_reject": 0.894, "always_answer": 0.5, "random": 0.6, "oracle": 0.95},
                 0.8: {"trained": 0.4, "always_reject": 0.447, "always_answer": 0.5, "random": 0.45, "oracle": 0.7}}
    verdict = _verdict(_policies(utilities, {0.2: 0.2, 0.8: 0.6}))
    assert verdict["beats_practical_baselines"] == {"0.2": True, "0.8": False}
    assert verdict["per_alpha"]["0.8"]["versus"]["always_reject"] == {"utility": 0.447, "margin": -0.047, "beats": False}
    assert verdict["per_alpha"]["0.2"]["versus"]["oracle"]["beats"] is False
    assert verdict["answer_rate_moves_with_alpha"] is True and verdict["answer_rate_change"] == pytest.approx(0.4)
    assert _verdict(_policies(utilities, {0.2: 0.3, 0.8: 0.3}))["answer_rate_moves_with_alpha"] is False
    assert _verdict(_policies(utilities, {0.2: 0.5, 0.8: 0.2}))["answer_rate_moves_with_alpha"] is False


def test_report_without_baseline(tmp_path: Path) -> None:
    trained = _model_eval("trained", [0.5], False, False)
    write_report(tmp_path, trained, None, calibrate(trained, [0.5]), {})
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["baseline"] is None and report["verdict"] is None
    assert "No baseline was evaluated" in (tmp_path / "report.md").read_text()
    assert (tmp_path / REJECT_PLOT).stat().st_size > 0


def test_auroc() -> None:
    assert auroc([row(0.0, None, p=0.9), row(1.0, None, p=0.1)]) == 1.0
    assert auroc([row(0.0, None, p=0.5), row(1.0, None, p=0.5)]) == 0.5
    assert auroc([row(1.0, None, p=0.5)]) is None


# --- evaluate_model ------------------------------------------------------------------------------


class TableBackend(Backend):
    """Replies and P(reject) per question; a question starting "TOO LONG" does not fit."""

    kind = "table"
    capabilities = frozenset({"score"})

    def __init__(self, table: dict[str, tuple[str, float]]) -> None:
        self.table = table
        self.model_name = "table"
        self.context_length = 2048
        self.prompts: list[list[dict[str, str]]] = []

    def _lookup(self, messages: list[dict[str, str]]) -> tuple[str, float]:
        question = messages[-1]["content"]
        if question.startswith("TOO LONG"):
            raise PromptTooLongError("prompt is 9999 tokens")
        self.prompts.append(messages)
        return self.table[question]

    async def generate(self, request: GenerationRequest, on_text=None) -> Generation:  # noqa: ANN001
        await asyncio.sleep(0)
        text, _ = self._lookup(request.messages)
        return Generation(text=text, prompt_tokens=5, completion_tokens=3)

    async def continuation_logprob(self, messages: list[dict[str, str]], continuation: str) -> tuple[float, int]:
        assert continuation == REJECT_PHRASE
        return math.log(self._lookup(messages)[1]), 5


def _record(i: int, question: str, answer: str, competence: float) -> ProbeRecord:
    task = Task(id=f"t{i}", question=question, answer=answer, task="numeric")
    return ProbeRecord(id=task.id, task=task, competence=competence, correct=0, samples=[])


async def test_evaluate_model_with_a_table_backend() -> None:
    records = [_record(0, "What is 2 + 3?", "5", 1.0), _record(1, "What is 7391 * 2864?", "21167824", 0.0),
               _record(2, "TOO LONG question", "1", 0.5)]
    backend = TableBackend({"What is 2 + 3?": ("2 + 3 = 5", 0.1), "What is 7391 * 2864?": (REJECT_PHRASE, 0.8)})
    config = EvalStageConfig(alphas=[0.2, 0.8], in_flight=2)
    result = await evaluate_model("table", records, config, demonstrations=False, progress=False, backend=backend)
    assert result.skipped == ["t2"] and len(result.rows) == 4
    assert [(r.id, r.alpha) for r in result.rows] == [("t0", 0.2), ("t1", 0.2), ("t0", 0.8), ("t1", 0.8)]
    assert all(p["role"] != "assistant" for chat in backend.prompts for p in chat)  # no demonstrations
    easy, hard = result.rows_for(0.8)
    assert (easy.rejected, easy.correct, easy.p_reject) == (False, True, pytest.approx(0.1))
    assert (hard.rejected, hard.correct, hard.p_reject) == (True, False, pytest.approx(0.8))
    metrics = result.metrics()[0.2]
    assert metrics.reject_f1 == 1.0 and metrics.accuracy_answered == 1.0 and metrics.utility == pytest.approx((1 + 0.8**0.5) / 2)
    scored = await evaluate_model("table", records[:2], config, demonstrations=True, progress=False, generate=False, backend=backend)
    assert all(r.rejected is None and r.p_reject is not None for r in scored.rows) and scored.metrics() == {}
    backend.prompts.clear()
    assert await base_answers("table", records, config, progress=False, backend=backend) == {"t0": True, "t1": False}
    assert [prompt for prompt in backend.prompts] == [r.task.prompt_messages() for r in records[:2]]  # plain questions, once each


@pytest.mark.slow
async def test_evaluate_smollm2(smollm2_folder: Path) -> None:
    records = [
        _record(0, "What is 2 + 3?", "5", 1.0),
        _record(1, "What is 7391 * 2864?", "21167824", 0.0),
        _record(2, "How many legs does a spider have?", "8", 0.75),
        _record(3, "What is 48 * 17?", "816", 0.25),
    ]
    config = EvalStageConfig(alphas=[0.2, 0.8], max_tokens=16, in_flight=8)
    result = await evaluate_model(smollm2_folder, records, config, demonstrations=True, progress=False)
    assert len(result.rows) == 8 and not result.skipped
    for r in result.rows:
        assert isinstance(r.rejected, bool) and isinstance(r.correct, bool) and r.text is not None
        assert 0.0 < r.p_reject <= 1.0
    for metrics in result.metrics().values():
        assert metrics.n == 4
        for value in (metrics.answer_rate, metrics.accuracy_answered, metrics.accuracy_overall, metrics.reject_f1, metrics.utility):
            assert 0.0 <= value <= 1.0
    calibration = calibrate(result, config.alphas)
    assert all(0.0 <= t <= 1.0 for t in calibration.thresholds.values())
