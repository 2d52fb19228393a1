"""`disrouter train STAGE --config FILE [--out DIR]`: the thin entry point over the pipeline."""

from __future__ import annotations

from disrouter.cli.common import fail
from disrouter.node.backends import ModelNotFoundError

from .config import TrainingConfigError
from .pipeline import Pipeline, TrainConfig
from .probe import ProbeError
from .tasks import TaskFileError

PROG = "disrouter train"


def main(stage: str, config_path: str, out: str | None, progress: bool = True) -> int:
    """Run ``stage`` (probe, sft, rl, eval or all) of the run ``config_path`` describes."""
    if stage == "family":
        from .family.cli import main as train_family

        return train_family(config_path, out, progress)
    if stage == "mesh":
        return _mesh(config_path, progress)
    try:
        config = TrainConfig.load(config_path, out)
        Pipeline(config, progress=progress).run(stage)  # type: ignore[arg-type]
    except (TrainingConfigError, ProbeError, TaskFileError, ModelNotFoundError, FileNotFoundError, ValueError) as exc:
        return fail(PROG, exc)
    except ModuleNotFoundError as exc:
        return fail(PROG, f"{exc.name} is missing: the training stages need pip install 'disrouter[train]'")
    if stage in ("eval", "all"):
        print(f"report: {config.out / 'report.md'}; model for disrouter-node: {config.out / 'model'}")
    return 0


def _mesh(config_path: str, progress: bool) -> int:
    """`disrouter train mesh`: mesh-utility calibration of the tiers a mesh config lists."""
    from .mesh_run import run_mesh_calibration

    try:
        report = run_mesh_calibration(config_path, progress)
    except (TrainingConfigError, TaskFileError, ModelNotFoundError, FileNotFoundError, ValueError) as exc:
        return fail(PROG, exc)
    print(f"mesh calibration: {report}")
    return 0
