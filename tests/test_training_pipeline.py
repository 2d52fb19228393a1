"""`disrouter train all` on the smoke config, end to end, and the trained model serving on the mesh."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from conftest import Mesh
from test_cli import BIN, run_cli

from disrouter.mesh.objective import DEFAULT_ALPHAS, DEFAULT_GAMMA
from disrouter.node.calibration import CALIBRATION_FILENAME, load_calibration
from disrouter.training.pipeline import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "training" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
async def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke run for the module: every stage with real training steps."""
    out = tmp_path_factory.mktemp("smoke")
    code, stdout, stderr = await run_cli("disrouter", "train", "all", "--config", str(SMOKE), "--out", str(out), "--no-progress", timeout=600)
    assert code == 0, (stdout + stderr)[-4000:]
    return out


@pytest.mark.slow
async def test_the_smoke_run_writes_every_stage_report_and_calibration(smoke_run: Path) -> None:
    report = json.loads((smoke_run / "report.json").read_text())

    for alpha in ("0.2", "0.8"):
        figures = report["alphas"][alpha]
        assert 0.0 <= figures["answer_rate"] <= 1.0 and 0.0 <= figures["reject_f1"] <= 1.0
        assert figures["accuracy_answered"] is None or 0.0 <= figures["accuracy_answered"] <= 1.0
    assert report["baseline"] is not None
    assert (smoke_run / "report.md").read_text().count("|") > 10
    assert [p for p in smoke_run.glob("*.png") if p.stat().st_size > 1000]
    assert (smoke_run / "probe" / "probe.jsonl").stat().st_size > 0
    for stage in ("sft", "rl"):
        assert (smoke_run / stage / "model" / "config.json").is_file()
    calibration = load_calibration(None, smoke_run / "model")
    assert (smoke_run / "model" / CALIBRATION_FILENAME).is_file() and calibration.demonstrations is False
    assert set(calibration.thresholds) == {0.2, 0.8}


@pytest.mark.slow
async def test_a_rerun_resumes_instead_of_training_again(smoke_run: Path) -> None:
    before = (smoke_run / "sft" / "model" / "config.json").stat().st_mtime
    code, stdout, stderr = await run_cli("disrouter", "train", "sft", "--config", str(SMOKE), "--out", str(smoke_run), "--no-progress", timeout=300)

    assert code == 0, (stdout + stderr)[-3000:]
    assert (smoke_run / "sft" / "model" / "config.json").stat().st_mtime == before


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["probe", "generate"])
async def test_the_trained_model_routes_live_queries(smoke_run: Path, mesh: Mesh, policy: str) -> None:
    node_id = f"trained-{policy}"
    process = await asyncio.create_subprocess_exec(
        str(BIN / "disrouter-node"), "--model", str(smoke_run / "model"), "--key", "trained", "--cost", "0.1", "--entry",
        "--policy", policy, "--nats", mesh.url, "--prefix", mesh.prefix, "--node-id", node_id,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await mesh.add("large", 0.9, "tier-c", policy="always")
        await mesh.all_see({node_id}, timeout=120)
        client = await mesh.client()

        answers = await asyncio.gather(*(client.ask(q, timeout=120, max_tokens=16) for q in ("Which planet is known as the Red Planet?", "Who was the mayor of Ulm in 1712?")))

        for answer in answers:
            assert answer.path[0].node_id == node_id and answer.path[-1].decision in ("answer", "forced")
            if policy == "probe":
                assert answer.path[0].reject_prob is not None
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]


@pytest.mark.parametrize(
    "config, expected",
    [
        ("model: x\ntasks: {synthetic: {}}\nout: o\nprobe: {samples: 2}\nwarmup: 3\n", "unknown keys ['warmup']"),
        ("tasks: {synthetic: {}}\nout: o\n", "missing model"),
        ("model: x\ntasks: {synthetic: {}}\nstages: [probe, dance]\nout: o\n", "stages ['dance']"),
        ("model: x\ntasks: {synthetic: {}}\nout: o\nrl: {gamma: 0.5}\n", "rl.gamma: set alphas and gamma once, at the top"),
        ("model: x\ntasks: {synthetic: {}}\nout: o\nalphas: [0.2, 1.2]\n", "alphas [1.2] must lie strictly between 0 and 1"),
        ("model: x\ntasks: {synthetic: {}}\nout: o\ngamma: -1\n", "gamma must be a positive number"),
    ],
)
async def test_bad_configs_are_one_readable_line(tmp_path: Path, config: str, expected: str) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(config)

    code, _, err = await run_cli("disrouter", "train", "all", "--config", str(path))

    assert code != 0 and len(err.strip().splitlines()) == 1 and expected in err, err


async def test_a_missing_config_file_is_one_readable_line() -> None:
    code, _, err = await run_cli("disrouter", "train", "probe", "--config", "/no/such.yaml")

    assert code != 0 and err.strip() == "disrouter train: error: config file /no/such.yaml does not exist"


def test_alphas_and_gamma_are_set_once_for_every_stage(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model: x\ntasks: {synthetic: {}}\nout: o\nalphas: [0.3, 0.7]\ngamma: 0.25\nrl: {max_steps: 2}\n")
    config = TrainConfig.load(path)

    assert config.section("sft") == {"alphas": [0.3, 0.7]}
    assert config.section("rl") == {"max_steps": 2, "alphas": [0.3, 0.7], "gamma": 0.25}
    assert config.section("eval") == {"alphas": [0.3, 0.7], "gamma": 0.25} and config.section("probe") == {}
    path.write_text("model: x\ntasks: {synthetic: {}}\nout: o\n")
    assert TrainConfig.load(path).section("eval") == {"alphas": list(DEFAULT_ALPHAS), "gamma": DEFAULT_GAMMA}
