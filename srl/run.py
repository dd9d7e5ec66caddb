"""Entry point: ``python -m srl.run [+experiment=NAME] [overrides]``.

The only code that sees the whole config: it builds typed objects with ``hydra.utils.instantiate``
and hands them to the loop (DESIGN.md rule 1).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srl.loop import DataSettings, SelfRewardingLoop
from srl.models import config_fingerprint
from srl.tracking import Tracker

log = logging.getLogger("srl")

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# Config sections each stage's outputs depend on; a finished stage is reused only if they match.
STAGE_INPUTS = {
    "data": ("data", "judge"),
    "m1": ("data", "judge", "model", "sft"),
}


def fingerprints(cfg: DictConfig) -> dict[str, str]:
    return {
        stage: config_fingerprint({k: OmegaConf.to_container(cfg[k], resolve=True) for k in keys})
        for stage, keys in STAGE_INPUTS.items()
    }


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config without Hydra's own node (what ``--cfg job`` prints)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in cfg if k != "hydra"}


def build_logger(cfg: DictConfig, run_dir: Path) -> Any | None:
    if not cfg.get("logger"):
        return None
    logger = instantiate(cfg.logger)
    logger.log_hyperparams(job_config(cfg))
    return logger


def build_loop(cfg: DictConfig, run_dir: Path) -> SelfRewardingLoop:
    data = DataSettings(
        source=instantiate(cfg.data.source),
        build=instantiate(cfg.data.build),
        eft_sampling=instantiate(cfg.data.eft_sampling),
    )
    return SelfRewardingLoop(
        run_dir=run_dir,
        model=instantiate(cfg.model),
        data=data,
        judge=instantiate(cfg.judge.template),
        sft=instantiate(cfg.sft),
        trainer_factory=instantiate(cfg.trainer),
        loop=instantiate(cfg.iteration),
        fingerprints=fingerprints(cfg),
        tracker=Tracker(run_dir, build_logger(cfg, run_dir)),
    )


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    keys = [k for k in summary if k.endswith(("/loss", "/val_loss", "/val_loss_before", "/steps")) or k in ("data/ift_train", "data/eft_train", "data/trees_heldout")]
    lines = [f"  {k:<32} {summary[k]:.4g}" if isinstance(summary[k], float) else f"  {k:<32} {summary[k]}" for k in sorted(keys)]
    print("srl run finished: " + str(run_dir) + "\n" + "\n".join(lines) + f"\n  summary: {run_dir / 'summary.json'}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    loop = build_loop(cfg, run_dir)
    try:
        summary = loop.run()
    finally:
        if loop.tracker.logger is not None and hasattr(loop.tracker.logger, "experiment"):
            import wandb

            if wandb.run is not None:
                wandb.finish()
    print_summary(summary, run_dir)
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
