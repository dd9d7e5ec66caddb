"""Entry point: ``python -m srl.run [+experiment=NAME] [overrides]``.

The only code that sees the whole config: it builds typed objects with ``hydra.utils.instantiate``
and hands them to the loop (DESIGN.md rule 1).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from srl.config.judges import judges
from srl.config.paths import CONF_DIR, register_resolvers
from srl.config.validation import validate_config
from srl.core import distributed
from srl.judging.backends import describe_judge
from srl.pipeline.fingerprints import EVAL_INPUTS, STAGE_INPUTS, fingerprints, stage_inputs  # noqa: F401  (re-exported)
from srl.pipeline.loop import SelfRewardingLoop
from srl.pipeline.model_card import command_line, push
from srl.pipeline.stages.data import DataSettings
from srl.pipeline.tracking import Tracker, build_logger, close_logger

log = logging.getLogger("srl")


register_resolvers()


def build_loop(cfg: DictConfig, run_dir: Path) -> SelfRewardingLoop:
    data = DataSettings(
        source=instantiate(cfg.data.source),
        build=instantiate(cfg.data.build),
        eft_sampling=instantiate(cfg.data.eft_sampling),
        instructions=instantiate(cfg.data.get("instructions")),
        eft_rows=instantiate(cfg.data.get("eft_rows")),
    )
    sft, dpo = instantiate(cfg.sft), instantiate(cfg.dpo)
    judge, evaluation = judges(cfg, (sft.select, dpo.select))  # the external judge, if any, built once (srl/config/judges.py)
    tracker = Tracker(run_dir, build_logger(cfg))
    tracker.log({"judge/by": describe_judge(judge.external),
                 "eval/h2h/judge_by": describe_judge(evaluation.h2h.external) if evaluation and evaluation.h2h.external else None})
    return SelfRewardingLoop(
        run_dir=run_dir,
        model=instantiate(cfg.model),
        data=data,
        judge=judge,
        sft=sft,
        prompt_gen=instantiate(cfg.prompt_gen),
        generation=instantiate(cfg.generation),
        dpo=dpo,
        trainer_factory=instantiate(cfg.trainer),
        loop=instantiate(cfg.iteration),
        fingerprints=fingerprints(cfg),
        stage_configs=stage_inputs(cfg),
        evaluation=evaluation,
        pairs=instantiate(cfg.pairs),
        peft=instantiate(cfg.peft),
        backend=instantiate(cfg.backend) if cfg.get("backend") else None,
        tracker=tracker,
        hub=instantiate(cfg.hub) if cfg.get("hub") else None,
        command=run_command(run_dir),
        meta=instantiate(cfg.meta) if cfg.get("meta") else None,
    )


def run_command(run_dir: Path) -> str:
    """This run's command line (its overrides; the run dir pinned), for the model cards."""
    try:
        task = list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra run (a loop built in code)
        task = []
    return command_line([*(o for o in task if not o.startswith("hydra.run.dir=")), f"hydra.run.dir={run_dir}"])


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    shown = ("/loss_first", "/loss_mean", "/loss_last", "/val_loss", "/val_loss_before", "/steps", "/resumed_at_step",
             "/rewards/accuracy_mean", "/rewards/margin_mean", "/acceptance_rate", "/parse_fail_rate", "/mean_score", "/kept", "/mean_margin", "/tokens_mean")
    keys = [k for k in summary if k.endswith(shown) or k in ("data/ift_train", "data/eft_train", "data/trees_heldout")]
    lines = [f"  {k:<36} {summary[k]:.4g}" if isinstance(summary[k], float) else f"  {k:<36} {summary[k]}" for k in sorted(keys)]
    table = run_dir / "eval" / "table.md"
    shown_table = "\n" + table.read_text(encoding="utf-8") if table.is_file() else ""
    print("srl run finished: " + str(run_dir) + "\n" + "\n".join(lines) + shown_table + f"\n  summary: {run_dir / 'summary.json'}")


def processes_wanted(cfg: DictConfig) -> int:
    """Processes a training strategy needs on this node (``trainer.devices``; 1 for ``auto``)."""
    devices = OmegaConf.select(cfg, "trainer.devices")
    return devices if isinstance(devices, int) and devices > 1 else 1


def relaunch(cfg: DictConfig, nproc: int) -> int:
    """Run this job again under torchrun with ``nproc`` processes, in the same run dir; its exit code.

    ``python -m srl.run trainer=ddp trainer.devices=8`` is the same as ``torchrun --nproc_per_node 8
    -m srl.run trainer=ddp trainer.devices=8 hydra.run.dir=<dir>``: every rank runs the loop
    (``srl/core/distributed.py``), started together, rather than Lightning spawning workers at the first fit.
    """
    hc = HydraConfig.get()
    overrides = [o for o in hc.overrides.task if not o.startswith("hydra.run.dir=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "srl.run",
           *overrides, f"hydra.run.dir={hc.runtime.output_dir}"]
    log.info("launching %d processes: %s", nproc, " ".join(cmd))
    env = dict(os.environ)
    if "SLURM_NTASKS" in env:
        # A one-task SLURM job launching its own workers: Lightning's SLURM detection would see one
        # task; the job name "bash" is Lightning's documented way to make it use torchrun's variables.
        env["SLURM_JOB_NAME"] = "bash"
    return subprocess.call(cmd, env=env)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | None:
    validate_config(cfg)  # a wrong type, unknown key, missing value or out-of-range value stops here, before any work
    if distributed.launched_world_size() == 1 and processes_wanted(cfg) > 1:
        code = relaunch(cfg, processes_wanted(cfg))
        if code:
            raise SystemExit(code)
        return None
    if distributed.init_from_env() and not distributed.is_main():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 tells the story; others report problems only
    # Every rank works in rank 0's run dir (a rank's ${now:...} may differ by a second).
    run_dir = Path(distributed.broadcast(HydraConfig.get().runtime.output_dir))
    loop = build_loop(cfg, run_dir)
    try:
        summary = loop.run()
    finally:
        close_logger(loop.tracker.logger)
    if distributed.is_main():
        print_summary(summary, run_dir)
        if loop.hub.push:  # after the run: every model is saved and recorded, a failed upload loses nothing
            for url in push(loop.model_folders(), loop.hub.repo_id, loop.hub.private):
                print(f"  pushed: {url}")
    return summary


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
