"""Progress on stderr: the bar every stage shows, and a compact per-step line for trainers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(stage: str, enabled: bool = True) -> Progress:
    """The bar every stage shows on stderr: ``stage`` then the task's description, count and times."""
    return Progress(
        TextColumn(f"[bold]{stage}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def compact_progress(trainer: Any, keys: tuple[str, ...]) -> None:
    """Swap the trainer's progress bar for one that prints only ``keys`` of each step's log, not every
    metric; without a bar (``disable_tqdm``) nothing is printed (the logs still reach the trainer state)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    class CompactProgress(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                shown = {key: round(logs[key], 4) for key in keys if isinstance(logs.get(key), (int, float))}
                if shown:
                    self.training_bar.write(f"step {state.global_step}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))

    trainer.pop_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(CompactProgress())
