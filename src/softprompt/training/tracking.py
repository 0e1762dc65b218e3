"""Experiment tracking: a run's records (what metrics.jsonl holds) also go to TensorBoard, Weights & Biases or
MLflow through accelerate's trackers (`--report-to`). metrics.jsonl is always written; a tracker is extra.

TensorBoard writes event files into OUTPUT/tensorboard (`tensorboard --logdir runs/`); W&B and MLflow use their
own settings (`WANDB_MODE=offline`, `MLFLOW_TRACKING_URI`, ...), as they do under accelerate.
"""

from __future__ import annotations

import importlib.util
from enum import Enum
from pathlib import Path
from typing import Any

from ..config import ReportTo
from ..errors import ConfigError

_NEEDS = {ReportTo.TENSORBOARD: ("tensorboard", "tensorboard"), ReportTo.WANDB: ("wandb", "wandb"),
          ReportTo.MLFLOW: ("mlflow", "mlflow")}


def check_available(report_to: ReportTo) -> None:
    """Refuse, before any work, a tracker whose package is not installed (one line naming the pip package)."""
    if report_to is ReportTo.NONE:
        return
    module, package = _NEEDS[report_to]
    if importlib.util.find_spec(module) is None and not (report_to is ReportTo.TENSORBOARD
                                                         and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"--report-to {report_to.value}: the '{package}' package is not installed; "
                          f"pip install {package} (or --report-to none)")


def _plain(value: Any) -> bool | str | float | int | None:
    """Hyperparameter values a tracker accepts: numbers, text, booleans."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Enum):
        return value.value
    return str(value)


class Tracker:
    """One accelerate tracker, fed the loop's records (`{"step", "split", figures...}`)."""

    def __init__(self, report_to: ReportTo, out: Path, run_name: str, config: dict[str, Any]) -> None:
        from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker  # start-up time

        if report_to is ReportTo.TENSORBOARD:
            self.tracker = TensorBoardTracker(run_name, out / "tensorboard")
        elif report_to is ReportTo.WANDB:
            self.tracker = WandBTracker(run_name)
        else:
            self.tracker = MLflowTracker(run_name, str(out / "mlruns"))
        self.tracker.start()
        flat = {f"{group}.{key}" if isinstance(values, dict) else group: _plain(value)
                for group, values in config.items()
                for key, value in (values.items() if isinstance(values, dict) else [(None, values)])}
        self.tracker.store_init_configuration(flat)

    def log(self, record: dict[str, Any]) -> None:
        split = record.get("split", "train")
        values = {f"{split}/{key}": float(value) for key, value in record.items()
                  if key not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if values:
            self.tracker.log(values, step=int(record["step"]))

    def finish(self) -> None:
        self.tracker.finish()


def open_tracker(report_to: ReportTo, out: Path, run_name: str, config: dict[str, Any]) -> Tracker | None:
    return None if report_to is ReportTo.NONE else Tracker(report_to, out, run_name, config)
