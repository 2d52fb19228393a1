"""`disrouter train STAGE --config FILE` with the family's own splits: a query's split is its task's
``meta.split`` (sa-train / sa-val / sa-test), not the pipeline's id hash, so SFT and RL never see the
queries `disrouter bench quality` calibrates its routers on (val) or scores (test).

    python training/family/self-aware/train.py STAGE --config training/configs/family-sa-s.yaml
"""

from __future__ import annotations

import sys

import disrouter.training.cli as train_cli
from disrouter.cli.main import main
from disrouter.training.pipeline import Pipeline
from disrouter.training.probe import load_records


class FamilySplitPipeline(Pipeline):
    """The stock pipeline; only ``records`` differs: the split comes from each task's meta."""

    def records(self, split):  # noqa: ANN001, ANN201
        done = load_records(self.out / "probe")
        if not done:
            return super().records(split)  # raises the stock "run probe first" error
        return [record for record in done.values() if record.task.meta.get("split") == split]


if __name__ == "__main__":
    train_cli.Pipeline = FamilySplitPipeline  # type: ignore[misc]
    sys.exit(main(["train", *sys.argv[1:]]))
