"""What every stage of a run shares: the run dir, its chain of models, the tracker, and training.

``RunModels`` knows where M_t lives in the run dir and how to load it (for generation, or for
training under ``conf/peft``) through one ``ModelSlot`` (one model in memory); ``StageContext``
bundles it with the run dir, the tracker, the run seed and each stage's config stamp, and
``fit_stage`` trains a Lightning module as a resumable stage. Stage functions
(``srl/pipeline/stages/``) take a ``StageContext`` and their own settings, and return
``(metrics, outputs)`` for the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence, Callable

import lightning as L

from srl.core import distributed
from srl.core.progress import ChunkHook
from srl.core.rundir import Stamp
from srl.generation.slot import ModelSlot
from srl.models.loading import HFModelSpec
from srl.pipeline.tracking import Tracker
from srl.training.adapters import AdapterChainSpec, PeftSettings, TrainingModelSpec, save_trained, trainable_parameters
from srl.training.sft import restore_dropout, set_dropout
from srl.training.steps import StageProgress
from srl.training.strategies import full_state_dict

log = logging.getLogger(__name__)

StageResult = tuple[dict[str, Any], list[str]]  # metrics, outputs (paths in the run dir)


class NoPairsError(RuntimeError):
    """An iteration produced no usable preference pair; training on nothing is refused."""


@dataclasses.dataclass
class RunModels:
    """The run's models: M0 (``start``, a model spec) and M1..M_T saved in the run dir."""

    run_dir: Path
    start: Any
    peft: PeftSettings
    slot: ModelSlot

    def folder(self, t: int) -> Path:
        """Where M_t is saved: ``m{t}/model`` (a plain HF folder), or ``m{t}/adapter`` (peft.save=adapter)."""
        return self.run_dir / f"m{t}" / ("adapter" if self.peft.save == "adapter" else "model")

    def spec(self, t: int) -> Any:
        """How to load M_t: the starting model for t = 0, else its folder (or M0 plus the adapters of M1..M_t)."""
        if t == 0:
            return self.start
        if self.peft.save == "adapter":
            folders = [self.folder(u) for u in range(1, t + 1)]
            return AdapterChainSpec(self.start, [str(f) for f in folders if (f / "adapter_config.json").is_file()])
        return HFModelSpec(str(self.folder(t)), dtype=getattr(self.start, "dtype", "float32"))

    def load(self, key: str, spec: Any) -> tuple[Any, Any]:
        """Load a model for generation once and keep it while consecutive stages use it (one model in memory)."""
        return self.slot.get(key, spec)

    def load_m(self, t: int) -> tuple[Any, Any]:
        return self.load(f"m{t}", self.spec(t))

    def load_train(self, t: int) -> tuple[Any, Any]:
        """M_t as a training stage takes it: under ``conf/peft`` quantized and wrapped in a fresh adapter."""
        if not self.peft.enabled:
            return self.slot.get(f"m{t}", self.spec(t), train=True)
        return self.slot.get(f"train:m{t}", TrainingModelSpec(self.spec(t), self.peft), train=True)

    def save(self, model: Any, tokenizer: Any, t: int, trainer: L.Trainer) -> Path:
        """Save the model a training stage produced as M_t (rank 0; adapters merged unless peft.save=adapter).

        Under a sharded strategy (FSDP, DeepSpeed ZeRO-3) the weights are gathered first (a collective
        call) and rank 0 loads them into a fresh copy of the model it trained, which it saves."""
        folder = self.folder(t)
        state = full_state_dict(trainer)
        self.slot.clear()  # the trained model in memory is no longer M_{t-1}; a quantized merge reloads the base

        def write() -> None:
            trained = model
            if state is not None:
                trained, _ = (TrainingModelSpec(self.spec(t - 1), self.peft) if self.peft.enabled else self.spec(t - 1)).load()
                trained.load_state_dict(state)
            save_trained(trained, tokenizer, self.spec(t - 1), self.peft, folder)

        distributed.on_main(write)
        return folder


@dataclasses.dataclass
class StageContext:
    """The run as a stage sees it. ``stamp(stage)``: the stage's config (``rundir.Stamp``);
    ``hook``: called after each generation chunk (tests stop a run with it); ``on_no_pairs``:
    ``error`` or ``carry`` (``LoopSettings``); the training fields configure ``fit_stage``."""

    run_dir: Path
    models: RunModels
    tracker: Tracker
    stamp: Callable[[str], Stamp]
    seed: int
    trainer_factory: Callable[..., L.Trainer]
    checkpoint_every_n_steps: int = 20
    keep_checkpoints: bool = False
    on_no_pairs: str = "error"
    hook: ChunkHook | None = None

    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter{t}"

    @property
    def precision(self) -> Any:
        """The training stages' precision (``trainer.precision``), for work done outside the trainer that must match it."""
        return getattr(self.trainer_factory, "keywords", {}).get("precision")

    def no_pairs(self, reason: str) -> None:
        """Stop (``on_no_pairs=error``) or log and go on with nothing (``carry``)."""
        if self.on_no_pairs == "error":
            raise NoPairsError(reason)
        log.warning("%s. iteration.on_no_pairs=carry: the next model is a copy of this one", reason)


def trainable(prefix: str, model: Any) -> dict[str, Any]:
    count, total = trainable_parameters(model)
    return {f"{prefix}/trainable_params": count, f"{prefix}/params": total}


def accumulation(s: Any, name: str) -> int:
    """Micro-batches per optimizer step on each process: ``batch_size`` is the global batch, so
    ``micro_batch_size`` x processes x accumulation = ``batch_size`` however many processes train."""
    world = distributed.world_size()
    if s.accumulate_grad_batches % world:
        section = "sft" if name == "m1" else "dpo"
        raise ValueError(
            f"{section}.batch_size={s.batch_size} is not a multiple of {section}.micro_batch_size x processes "
            f"({s.micro_batch_size} x {world}): the global batch cannot be split evenly over the processes"
        )
    return s.accumulate_grad_batches // world


def fit_stage(
    ctx: StageContext, module: L.LightningModule, datamodule: L.LightningDataModule, s: Any, name: str, metrics: dict[str, Any],
    prefix: str, validate_first: bool = False, callbacks: Sequence[L.Callback] = (),
) -> tuple[L.Trainer, float, StageProgress]:
    """Train ``module`` as stage ``name`` with dropout ``s.dropout``, resuming from the stage's
    checkpoint if a run was stopped in it; adds the stage statistics of ``prefix``
    (``steps.summarize``) to ``metrics``; returns the trainer, fit seconds and the stage's progress
    (call its ``finish()`` once the model is saved: it removes the checkpoint)."""
    L.seed_everything(s.seed, workers=True, verbose=False)
    previous = set_dropout(module.model, s.dropout) if s.dropout is not None else {}
    progress = StageProgress(ctx.run_dir / name, prefix, ctx.checkpoint_every_n_steps, ctx.stamp(name), ctx.keep_checkpoints)
    trainer = ctx.trainer_factory(
        max_epochs=s.max_epochs,
        accumulate_grad_batches=accumulation(s, name),
        logger=ctx.tracker.logger if ctx.tracker.logger is not None else False,
        default_root_dir=str(ctx.run_dir / name),
        enable_checkpointing=False,  # steps.StageProgress saves the stage's checkpoints
        callbacks=[progress, *callbacks],
        limit_val_batches=None if validate_first else 0,
        use_distributed_sampler=False,  # SFTDataModule shards by rank itself (length-grouped batches included)
    )
    if validate_first:
        metrics[f"{prefix}/val_loss_before"] = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/val_loss"])
    ckpt = progress.resume_path()
    if ckpt is not None:
        log.info("stage %s: resuming from checkpoint %s", name, ckpt)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
    seconds = time.perf_counter() - started
    restore_dropout(module.model, previous)
    metrics.update(progress.summary())
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k == f"{prefix}/val_loss"})
    if ckpt is not None:
        metrics[f"{prefix}/resumed_at_step"] = progress.start_step
    return trainer, seconds, progress
