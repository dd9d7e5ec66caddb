"""Checkpoint selection as the paper does it (Sec. 4.1): snapshots every ``every_steps`` optimizer
steps, and the kept one is the checkpoint a fixed judge prefers head-to-head.

The paper saves a checkpoint every 200 steps and keeps the one that Claude 2 prefers against the
previous checkpoint on held-out validation prompts. ``sft.select`` / ``dpo.select``:

- ``Snapshots`` (a Lightning callback) writes the trainable weights at every ``every_steps``-th
  optimizer step and at the end of training to ``m{t}/select/step{N}.pt`` (rank 0; a resumed stage
  keeps the snapshots it already wrote);
- ``sequential_choice``: the first snapshot is kept; each later one meets the kept one head-to-head
  and replaces it when it wins more validation prompts than it loses (ties and unscored prompts
  count for neither). A judge that always prefers the later checkpoint keeps the last; one that
  always prefers the earlier keeps the first. ``srl.pipeline.stages.select`` generates the replies
  and asks the judge.

Off (``every_steps: 0``) by default: on a CPU it costs a generation and judging pass per snapshot.
Sharded strategies (FSDP, DeepSpeed ZeRO-3) are refused: a snapshot would need a gather per save.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import torch

from srl.core import distributed, rundir
from srl.generation.sampling import SamplingSettings

SNAPSHOT = re.compile(r"step(\d+)\.pt")


@dataclasses.dataclass
class SelectSettings:
    """``sft.select`` / ``dpo.select``: snapshot cadence, validation prompts, the fixed judge (module docstring)."""

    every_steps: int = 0  # 0: off (the stage's last step is the model)
    prompts: Any = None  # srl.data.prompt_sets.PromptSetSettings; None: 8 held-out prompts
    judge: str = "m0"  # a run model m<j> (j below the stage's model; frozen), external (conf/external_judge), or a folder / Hub id
    num_samples: int | None = None  # judge samples per reply; None: judge.num_samples
    tie_margin: float = 0.0  # |score difference| <= margin: a tie
    reply_sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(temperature=0.0, max_new_tokens=128))
    judge_sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(temperature=0.0, max_new_tokens=96))
    keep_snapshots: bool = False  # false: the snapshot weights are deleted once the choice is made (replies and scores stay)
    seed: int = 0
    external: Any = None  # judge=external: the external judge (set by srl.config.judges, not in the config)

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"select.every_steps must be >= 0 (0: off), got {self.every_steps}")
        if self.tie_margin < 0:
            raise ValueError(f"select.tie_margin must be >= 0, got {self.tie_margin}")

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights training changes (all of them in full fine-tuning, the adapters under LoRA), on the CPU."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def load_snapshot(model: torch.nn.Module, path: Path) -> None:
    """Put a snapshot's weights into ``model`` (every saved tensor must match a trainable parameter)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(model.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise ValueError(f"{path}: snapshot names parameters the model does not have: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def snapshots(folder: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the snapshots in ``folder``, by step."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step*.pt") if (m := SNAPSHOT.fullmatch(p.name))]
    return sorted(found)


class Snapshots(L.Callback):
    """Trainable weights at every ``every_steps``-th optimizer step and at the end, as ``step{N}.pt``."""

    def __init__(self, folder: Path, every_steps: int) -> None:
        self.folder, self.every_steps = Path(folder), every_steps

    def _save(self, module: L.LightningModule, step: int) -> None:
        path = self.folder / f"step{step:06d}.pt"
        if step <= 0 or path.exists():
            return

        def write() -> None:  # rank 0 alone copies the weights to the CPU (the others would copy them for nothing)
            state = trainable_state(module.model if hasattr(module, "model") else module)
            tmp = rundir.check(path.with_name(path.name + ".tmp"))
            tmp.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            rundir.replace(tmp, path)

        distributed.on_main(write)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step and trainer.global_step % self.every_steps == 0:
            self._save(module, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(module, trainer.global_step)


Outcome = tuple[int, int, int]  # wins, losses, ties of the candidate against the kept checkpoint


def sequential_choice(steps: Sequence[int], meet: Callable[[int, int], Outcome]) -> tuple[int, list[dict[str, Any]]]:
    """The kept step and every comparison: ``meet(candidate, kept)`` gives the candidate's wins, losses and ties."""
    if not steps:
        raise ValueError("checkpoint selection: no snapshot was written (select.every_steps above the stage's steps?)")
    kept, records = steps[0], []
    for step in steps[1:]:
        wins, losses, ties = meet(step, kept)
        scored = wins + losses + ties
        replaced = wins > losses
        records.append({"candidate_step": step, "kept_step": kept, "wins": wins, "losses": losses, "ties": ties,
                        "win_rate": wins / scored if scored else None, "replaced": replaced})
        if replaced:
            kept = step
    return kept, records
