"""Metrics: one place that sends namespaced metrics to the experiment logger and to summary.json.

Also how a job presents itself to W&B (``run_identity``): in a Hydra multirun every job is its own
W&B run, grouped by sweep, tagged with its overrides and named after the values it sweeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srl.data.records import write_json


def prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node (what ``--cfg job`` prints)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in cfg if k != "hydra"}


def logger_identity(cfg: DictConfig) -> dict[str, Any]:
    """W&B name/group/tags/job_type/notes of this job (``tracking.run_identity``) from Hydra's runtime.

    A sweep file's ``hydra.sweeper.params`` keys name the job; for a sweep given on the command line
    (``judge=a,b``) the job's overrides do.
    """
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    swept = list(OmegaConf.select(hc, "sweeper.params") or {})
    return run_identity(
        list(hc.overrides.task), multirun, OmegaConf.select(cfg, "sweep.name"), hc.sweep.dir if multirun else None, swept,
        hc.job.num if multirun else None, OmegaConf.select(cfg, "sweep.question"),
    )


def build_logger(cfg: DictConfig) -> Any | None:
    if not cfg.get("logger"):
        return None
    extra = {}
    if str(cfg.logger.get("_target_", "")).endswith("WandbLogger"):
        extra = {k: v for k, v in logger_identity(cfg).items() if k in cfg.logger and cfg.logger[k] is None and v is not None}
    logger = instantiate(cfg.logger, **extra)
    logger.log_hyperparams(job_config(cfg))
    return logger


def close_logger(logger: Any | None) -> None:
    """Finish the W&B run (its files are complete only then); other loggers need nothing."""
    if logger is not None and hasattr(logger, "experiment"):
        import wandb

        if wandb.run is not None:
            wandb.finish()


SAMPLE_ROWS = 24  # rows of each sample table (prompts, replies, judge texts) sent to the logger


MAX_TAG = 64  # W&B rejects longer tags


def run_identity(
    overrides: Sequence[str], multirun: bool, sweep_name: str | None = None, sweep_dir: str | None = None,
    swept_keys: Sequence[str] = (), job_num: int | None = None, question: str | None = None,
) -> dict[str, Any]:
    """W&B ``name``, ``group``, ``tags``, ``job_type`` and ``notes`` of one job.

    overrides: the job's command-line overrides (``judge=buckets``, ``+sweeps=judge_format``);
    swept_keys: the keys a sweep file varies (``hydra.sweeper.params``), which name the job together
    with any override whose key the command line swept. A single run gets tags only.
    """
    tags = sorted({o[:MAX_TAG] for o in overrides})
    if not multirun:
        return {"name": None, "group": None, "tags": tags, "job_type": "run", "notes": question}
    keys = {k.lstrip("+~") for k in swept_keys}
    swept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in keys]
    name = ",".join(swept) if swept else ",".join(o for o in overrides if not o.startswith("+sweeps=")) or "defaults"
    sweep = sweep_name or "multirun"
    group = f"{sweep}/{Path(sweep_dir).name}" if sweep_dir else sweep
    return {
        "name": f"{job_num}:{name}" if job_num is not None else name,
        "group": group,
        "tags": tags,
        "job_type": sweep,
        "notes": question,
    }


class Tracker:
    """Collects metrics under names like ``m1/sft/loss`` and forwards them to a Lightning logger."""

    def __init__(self, run_dir: str | Path, logger: Any | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.logger = logger
        self.summary: dict[str, Any] = {}

    def log(self, metrics: dict[str, Any]) -> None:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        text = {k: v for k, v in metrics.items() if isinstance(v, str)}
        self.summary.update(metrics)
        if self.logger is not None and numeric:
            self.logger.log_metrics(numeric)
        if self.logger is not None and text:
            # names (the judge, a baseline) have no history: they go to the run's summary (W&B), where a logger has one
            run_summary = getattr(getattr(self.logger, "experiment", None), "summary", None)
            if run_summary is not None and hasattr(run_summary, "update"):
                run_summary.update(text)

    def log_table(self, key: str, columns: list[str], rows: list[list[str]]) -> None:
        """A table into summary.json (a list of column -> cell dicts) and, where it can take one, the logger."""
        self.summary[key] = [dict(zip(columns, row)) for row in rows]
        if self.logger is not None and hasattr(self.logger, "log_table"):
            self.logger.log_table(key=key, columns=columns, data=rows)

    def log_samples(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """The first ``SAMPLE_ROWS`` rows as a logger table only (the stage's files hold them all)."""
        if self.logger is not None and hasattr(self.logger, "log_table") and rows:
            self.logger.log_table(key=key, columns=columns, data=[[_cell(v) for v in r] for r in rows[:SAMPLE_ROWS]])

    def write_summary(self) -> Path:
        path = self.run_dir / "summary.json"
        write_json(path, self.summary)
        return path


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else str(value)
