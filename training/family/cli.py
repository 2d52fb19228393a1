"""`disrouter train family --config FILE [--out DIR]`: pretrain the model family."""

from __future__ import annotations

from disrouter.cli.common import fail

from ..config import TrainingConfigError
from ..tasks import TaskFileError
from .config import FamilyConfig
from .run import run_family

PROG = "disrouter train family"


def main(config_path: str, out: str | None, progress: bool = True) -> int:
    """Train, evaluate and (when the config says ``commit_to``) commit the family."""
    try:
        config = FamilyConfig.load(config_path, out)
        summary = run_family(config, progress=progress)
    except (TrainingConfigError, TaskFileError, FileNotFoundError, ValueError) as exc:
        return fail(PROG, exc)
    for name, tier in summary["tiers"].items():
        accuracy = tier["accuracy"]
        print(f"tier {name}: cost {tier['cost']}, in-domain {accuracy['in_domain']['all']['greedy']:.2f}, "
              f"ood {accuracy['ood']['all']['greedy']:.2f} (greedy)")
    print(f"report: {config.out / 'report.md'}")
    return 0
