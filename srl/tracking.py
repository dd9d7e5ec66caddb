"""Metrics: one place that sends namespaced metrics to the experiment logger and to summary.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from srl.records import write_json

log = logging.getLogger(__name__)


class Tracker:
    """Collects metrics under names like ``m1/sft/loss`` and forwards them to a Lightning logger."""

    def __init__(self, run_dir: str | Path, logger: Any | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.logger = logger
        self.summary: dict[str, Any] = {}

    def log(self, metrics: dict[str, Any]) -> None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.summary.update(metrics)
        if self.logger is not None and numeric:
            self.logger.log_metrics(numeric)

    def log_table(self, key: str, columns: list[str], rows: list[list[str]]) -> None:
        """A table into summary.json (a list of column -> cell dicts) and, where it can take one, the logger."""
        self.summary[key] = [dict(zip(columns, row)) for row in rows]
        if self.logger is not None and hasattr(self.logger, "log_table"):
            self.logger.log_table(key=key, columns=columns, data=rows)

    def write_summary(self) -> Path:
        path = self.run_dir / "summary.json"
        write_json(path, self.summary)
        return path
