"""Lightning Trainers for the training stages: one device, DDP, FSDP or DeepSpeed ZeRO, one node or many.

``conf/trainer`` builds ``trainer`` as a partial; the loop calls it once per training stage (SFT,
each DPO), so each stage gets a fresh Trainer and a fresh strategy object (a strategy holds the
model it wrapped). ``strategy`` is a name Lightning knows (``auto``, ``ddp``) or a mapping with a
``name`` and that strategy's options (``build_strategy``).

Multi-process runs are started by a launcher (``torchrun``, SLURM's ``srun``, or ``srl/run.py``
re-launching itself through torchrun for ``trainer.devices > 1``); Lightning finds the process group
``srl.core.distributed.init_from_env`` initialised and the launcher's environment (``num_nodes`` x
``devices`` must equal the launcher's world size).
"""

from __future__ import annotations

import importlib
from typing import Any

import lightning as L
import torch

SHARDED = ("fsdp", "deepspeed")


def layer_classes(names: list[str]) -> set[type]:
    """Transformer block classes by name (``LlamaDecoderLayer``), from ``transformers``' model modules."""
    found = set()
    for name in names:
        family = name.replace("DecoderLayer", "").lower()  # LlamaDecoderLayer -> models/llama/modeling_llama.py
        try:
            found.add(getattr(importlib.import_module(f"transformers.models.{family}.modeling_{family}"), name))
        except (ImportError, AttributeError):
            raise ValueError(f"trainer.strategy.wrap_layers: no transformer layer class {name!r} (e.g. LlamaDecoderLayer, MistralDecoderLayer)") from None
    return found


def build_strategy(spec: Any) -> Any:
    """A Lightning strategy from ``conf/trainer``'s ``strategy`` (a name, or a mapping with ``name``).

    * ``ddp``: ``find_unused_parameters``, ``process_group_backend`` (nccl on GPUs, gloo on CPUs).
    * ``fsdp``: ``sharding_strategy`` (FULL_SHARD = ZeRO-3, SHARD_GRAD_OP = ZeRO-2, HYBRID_SHARD: full
      shard inside a node, replicas across nodes), ``wrap_layers`` (block classes wrapped as FSDP
      units, and checkpointed when ``checkpoint_layers``), ``cpu_offload``.
    * ``deepspeed``: ``stage`` (2 or 3), ``offload_optimizer``, ``offload_parameters`` (needs
      ``pip install deepspeed``).
    """
    if isinstance(spec, str):
        return spec
    options = dict(spec)
    name = options.pop("name", None)
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(**options)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        layers = layer_classes(list(options.pop("wrap_layers", [])))
        checkpoint = options.pop("checkpoint_layers", False)
        return FSDPStrategy(
            auto_wrap_policy=layers or None, activation_checkpointing_policy=layers if checkpoint else None,
            state_dict_type="full", **options,
        )
    if name == "deepspeed":
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(**options)
    raise ValueError(f"trainer.strategy.name must be ddp, fsdp or deepspeed, got {name!r}")


def trainer(strategy: Any = "auto", **kwargs: Any) -> L.Trainer:
    """A Lightning Trainer with a fresh strategy built from ``strategy``."""
    return L.Trainer(strategy=build_strategy(strategy), **kwargs)


def full_state_dict(trainer: L.Trainer) -> dict[str, torch.Tensor] | None:
    """The trained weights gathered from a sharded strategy (FSDP, DeepSpeed ZeRO-3), on every rank's
    call (it is collective), for rank 0 to save; None for strategies that leave whole weights in the module."""
    name = type(trainer.strategy).__name__.lower()
    if not any(s in name for s in SHARDED):
        return None
    state = trainer.strategy.lightning_module_state_dict()
    # The LightningModule holds the HF model as ``self.model``: strip that prefix.
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
