"""What a training stage reports and keeps: per-step statistics, their stage summary, checkpoints.

``StepStats`` sums a module's statistics over the micro-batches (and processes) of one optimizer
step. ``StageProgress`` (a Lightning callback) closes each optimizer step: it writes the step's row
to ``<stage>/train_steps.csv`` and the logger (``<prefix>/step/<name>``), and every
``checkpoint_every_n_steps`` steps and at each epoch's end saves a Lightning checkpoint (trainable
weights, optimizer, scheduler, loop and data position, RNG) to ``<stage>/checkpoints/last.ckpt``, so
a rerun resumes the stage where it stopped. ``summary`` turns the CSV into stage statistics:
``<prefix>/<name>_mean`` (over steps that have it), ``_first`` and ``_last``; counters (``target_tokens``,
``pairs``, ``judge/pairs``) are summed over the stage.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning as L
import torch

from srl.core import distributed, rundir
from srl.core.rundir import Stamp

STEPS_FILE = "train_steps.csv"


CHECKPOINT = "last.ckpt"


STAMP_FILE = "stage.json"  # the stage and config the checkpoint belongs to


class StepStats:
    """Running (numerator, denominator) sums of named statistics within one optimizer step.

    ``add(name, total, count)``: the step's value of ``name`` is sum(total) / sum(count) over its
    micro-batches and processes; ``count=None`` makes it a counter (the plain sum).
    """

    def __init__(self) -> None:
        self.sums: dict[str, list[Any]] = {}
        self.counters: set[str] = set()

    def add(self, name: str, total: Any, count: Any = None) -> None:
        # Tensors stay tensors until ``finish``: no device sync per micro-batch, one per optimizer step.
        entry = self.sums.setdefault(name, [0.0, 0.0])
        entry[0] = entry[0] + (total.detach() if isinstance(total, torch.Tensor) else total)
        entry[1] = entry[1] + (1.0 if count is None else count)
        if count is None:
            self.counters.add(name)

    def finish(self, trainer: Any = None) -> dict[str, float]:
        """The step's values (reduced over processes), and a fresh start for the next step."""
        names = sorted(self.sums)
        values = torch.tensor([[float(x) for x in self.sums[n]] for n in names], dtype=torch.float64).reshape(-1, 2)
        if distributed.world_size() > 1 and trainer is not None:
            values = trainer.strategy.reduce(values.to(trainer.strategy.root_device), reduce_op="sum").cpu()
        self.sums = {}
        # A mean over nothing (a statistic of a subset the step had none of) is left out, never reported as 0.
        return {n: float(v[0]) if n in self.counters else float(v[0] / float(v[1])) for n, v in zip(names, values)
                if n in self.counters or float(v[1]) > 0}


def read_steps(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def write_steps(path: Path, rows: list[dict[str, float]]) -> None:
    """All rows, atomically (a kill never leaves half a file)."""
    columns = ["step", "epoch"] + sorted({k for r in rows for k in r} - {"step", "epoch"})
    tmp = rundir.check(path.with_name(path.name + ".tmp"))
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    rundir.replace(tmp, path)


def summarize(rows: list[dict[str, float]], prefix: str, counters: set[str] = frozenset({"target_tokens", "pairs"})) -> dict[str, float]:
    """Stage statistics of per-step rows: mean, first and last of each statistic; counters summed."""
    out: dict[str, float] = {}
    if not rows:
        return out
    names = sorted({k for r in rows for k in r} - {"step", "epoch"})
    for name in names:
        values = [r[name] for r in rows if name in r]
        if name.rsplit("/", 1)[-1] in counters:  # judge/pairs too
            out[f"{prefix}/{name}"] = sum(values)
            continue
        out[f"{prefix}/{name}_mean"] = sum(values) / len(values)
        out[f"{prefix}/{name}_first"] = values[0]
        out[f"{prefix}/{name}_last"] = values[-1]
    return out


class StageProgress(L.Callback):
    """Per-step rows and resumable checkpoints of one training stage (see the module docstring).

    folder: the stage's folder (``<run dir>/m1``); stamp: the stage and its config (``rundir.Stamp``),
    kept beside the checkpoint (``checkpoints/stage.json``): resuming a checkpoint of another config
    is refused (``StageConfigMismatch``), never mixed; every_n_steps: 0 keeps no checkpoint; keep:
    leave the checkpoint after the stage finished.
    """

    def __init__(self, folder: Path, prefix: str, every_n_steps: int = 50, stamp: Stamp | None = None, keep: bool = False) -> None:
        self.folder, self.prefix, self.every_n_steps, self.keep = Path(folder), prefix, every_n_steps, keep
        self.stamp = stamp if stamp is not None else Stamp(prefix, "")
        self.steps_file = self.folder / STEPS_FILE
        self.checkpoint_dir = self.folder / "checkpoints"
        self.rows: list[dict[str, float]] = []
        self._last_step = 0
        self.start_step = 0  # the optimizer step training started (resumed) at

    def resume_path(self) -> Path | None:
        """The checkpoint to resume from, if there is one; one of another config is refused."""
        ckpt = self.checkpoint_dir / CHECKPOINT
        if not ckpt.is_file():
            return None
        rundir.check_stamp(self.checkpoint_dir / STAMP_FILE, self.stamp, f"its training checkpoint {ckpt}",
                           f"delete {self.checkpoint_dir} to train the stage from its start")
        return ckpt

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_step = self.start_step = trainer.global_step
        if trainer.ckpt_path is not None:
            # Lightning 2.6 first iterates the train loader before it restores the loop state (to
            # estimate the scheduler's steps), so the iterator starts at epoch 0; iterate again, now
            # that the epoch and its finished micro-batches are known (SFTDataModule._position).
            iter(trainer.fit_loop._data_fetcher)
        # Rows after the checkpoint we resumed from (or all rows, starting fresh) are redone.
        self.rows = [r for r in read_steps(self.steps_file) if r["step"] <= trainer.global_step]
        distributed.on_main(lambda: self.folder.mkdir(parents=True, exist_ok=True))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self._last_step:
            return  # inside an accumulation: no optimizer step yet
        self._last_step = trainer.global_step
        row = {"step": float(trainer.global_step), "epoch": float(trainer.current_epoch), **pl_module.stats.finish(trainer)}
        self.rows.append(row)
        distributed.on_main(lambda: write_steps(self.steps_file, self.rows))
        logger = trainer.logger
        if logger is not None:
            logger.log_metrics({f"{self.prefix}/step/{k}": v for k, v in row.items()})
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and not last_of_epoch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The epoch's last step is saved here, once the epoch is complete: resuming from a checkpoint
        # taken inside the last batch would make Lightning think the epoch still has batches left.
        if self.every_n_steps:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        """``last.ckpt`` replaced atomically: a kill mid-save leaves the previous checkpoint whole."""
        tmp = self.checkpoint_dir / (CHECKPOINT + ".tmp")
        distributed.on_main(lambda: rundir.check(self.checkpoint_dir).mkdir(parents=True, exist_ok=True))
        trainer.save_checkpoint(tmp)  # collective; rank 0 writes

        def publish() -> None:
            rundir.write_stamp(self.checkpoint_dir / STAMP_FILE, self.stamp)
            rundir.replace(tmp, self.checkpoint_dir / CHECKPOINT)

        distributed.on_main(publish)

    def summary(self) -> dict[str, float]:
        return summarize(self.rows, self.prefix)

    def finish(self) -> None:
        """After the stage's model is saved: checkpoints are no longer needed (unless kept)."""
        if not self.keep:
            distributed.on_main(lambda: rundir.remove(self.checkpoint_dir))


def checkpoint_state(module: torch.nn.Module, checkpoint: dict[str, Any]) -> None:
    """For ``on_save_checkpoint``: keep trainable weights only (frozen ones reload with the model,
    which for LoRA on a 4-bit 70B base is the difference between MBs and tens of GBs) and the RNG
    state (dropout masks after a resume equal an uninterrupted run's)."""
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
    checkpoint["srl_rng"] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        checkpoint["srl_rng"]["cuda"] = torch.cuda.get_rng_state_all()


def restore_state(checkpoint: dict[str, Any]) -> None:
    """For ``on_load_checkpoint``: the RNG state saved by ``checkpoint_state``."""
    rng = checkpoint.get("srl_rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
