"""Adapters and quantized bases (``conf/peft``): LoRA, QLoRA (4-bit NF4 base) and 8-bit loading, via PEFT and bitsandbytes.

``PeftSettings`` says how a model is loaded *for training* and what is trained:

* ``method: none`` (full fine-tuning, the default) or ``lora`` (only the adapter's A and B matrices
  train; the base is frozen).
* ``quantization: none | 4bit | 8bit``: the frozen base is loaded through bitsandbytes (NF4 with
  double quantization for 4-bit, LLM.int8 for 8-bit); the adapter and the LoRA arithmetic stay in
  ``compute_dtype``. Quantization needs LoRA: a quantized weight cannot take an optimizer step.

Under LoRA the DPO reference is the training model with its adapter switched off
(``dpo.reference_logprobs`` uses ``disable_adapter``): no second copy of the weights, and under
QLoRA the reference sees the same quantized base as the policy.

At the end of a training stage (``save_trained``) the adapter is merged, so the next iteration and
the evaluation load a plain ``save_pretrained`` folder (``save: merged``). A quantized base is not
merged in 4/8 bit (that would round the merged weights to the quantization grid): the base is
loaded again in its own dtype, the adapter applied and merged there. ``save: adapter`` keeps the
adapter alone, in ``m{t}/adapter`` beside the base it was trained on; ``AdapterChainSpec`` loads
M_t as the base with the adapters of M_1..M_t merged in memory (for 70B-sized runs, where a full
copy per iteration is 140 GB of disk).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from srl.core import rundir
from srl.models.loading import resolve_dtype, save_model

log = logging.getLogger(__name__)


METHODS = ("none", "lora")


QUANTIZATIONS = ("none", "4bit", "8bit")


SAVE_MODES = ("merged", "adapter")


@dataclasses.dataclass
class PeftSettings:
    """``conf/peft``: adapter method, LoRA shape, base quantization and how results are saved.

    ``r``/``alpha``/``dropout``: LoRA rank, scale numerator (the update is ``alpha / r * B A``) and
    dropout on the adapter's input. ``target_modules``: module names, or ``all-linear`` (every
    linear layer but the output head, as in QLoRA, Dettmers et al. 2023). ``seed``: the adapter's
    initialisation (A is random, B is zero, so a fresh adapter leaves the model unchanged).
    """

    method: str = "none"
    quantization: str = "none"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = "all-linear"
    bias: str = "none"
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    save: str = "merged"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"peft.method must be one of {METHODS}, got {self.method!r}")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"peft.quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.save not in SAVE_MODES:
            raise ValueError(f"peft.save must be one of {SAVE_MODES}, got {self.save!r}")
        if self.quantization != "none" and self.method == "none":
            raise ValueError(
                f"peft.quantization={self.quantization} needs an adapter (peft.method=lora, or peft=qlora): "
                "a quantized base cannot be fully fine-tuned"
            )
        if self.save == "adapter" and self.method == "none":
            raise ValueError("peft.save=adapter needs peft.method=lora")
        if self.r < 1 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"peft: need r >= 1, alpha > 0 and 0 <= dropout < 1 (got r={self.r}, alpha={self.alpha}, dropout={self.dropout})")
        resolve_dtype(self.compute_dtype)
        if not isinstance(self.target_modules, str):
            self.target_modules = list(self.target_modules)

    @property
    def enabled(self) -> bool:
        return self.method != "none"


QUANT_MISSING = (
    "peft.quantization={q} loads the base through bitsandbytes, which is not installed: "
    "pip install 'srl[quant]' (or pip install bitsandbytes), or use peft=lora (no quantization)"
)


def quantization_config(settings: PeftSettings) -> Any | None:
    """The ``BitsAndBytesConfig`` for the base, or None when it is loaded in its own dtype."""
    if settings.quantization == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModuleNotFoundError(QUANT_MISSING.format(q=settings.quantization))
    from transformers import BitsAndBytesConfig

    if settings.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=settings.quant_type,
        bnb_4bit_use_double_quant=settings.double_quant,
        bnb_4bit_compute_dtype=resolve_dtype(settings.compute_dtype),
    )


def load_base(spec: Any, settings: PeftSettings) -> tuple[torch.nn.Module, Any]:
    """``spec.load()``, quantized by ``settings`` (the spec must accept ``quantization_config``)."""
    quant = quantization_config(settings)
    if quant is None:
        return spec.load()
    if not hasattr(spec, "load_quantized"):
        raise ValueError(f"peft.quantization={settings.quantization}: {type(spec).__name__} cannot load a quantized base; use a saved model folder or Hub id")
    return spec.load_quantized(quant)


def attach_lora(model: torch.nn.Module, settings: PeftSettings) -> torch.nn.Module:
    """Wrap ``model`` in a fresh LoRA adapter (seeded); only adapter parameters require grad."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.quantization != "none":
        # Norms and the head to fp32, frozen base; we switch gradient checkpointing ourselves.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=settings.target_modules,
        bias=settings.bias, task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        wrapped = get_peft_model(model, config)
    wrapped.train()
    return wrapped


def is_adapter_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


@dataclasses.dataclass
class TrainingModelSpec:
    """What a training stage loads: ``base`` quantized and wrapped in a LoRA adapter per ``peft``."""

    base: Any
    peft: PeftSettings

    @property
    def name(self) -> str:
        return getattr(self.base, "name", type(self.base).__name__)

    def load(self) -> tuple[torch.nn.Module, Any]:
        model, tokenizer = load_base(self.base, self.peft)
        return (attach_lora(model, self.peft) if self.peft.enabled else model), tokenizer


@dataclasses.dataclass
class AdapterChainSpec:
    """M_t stored as adapters (``peft.save=adapter``): ``base`` with ``adapters`` merged in order, in memory."""

    base: Any
    adapters: Sequence[str]

    @property
    def name(self) -> str:
        return f"{getattr(self.base, 'name', 'base')}+{len(self.adapters)} adapters"

    @property
    def dtype(self) -> str:
        return getattr(self.base, "dtype", "float32")

    def load(self) -> tuple[torch.nn.Module, Any]:
        model, tokenizer = self.base.load()
        return merge_adapters(model, self.adapters), tokenizer

    def load_quantized(self, quant: Any) -> tuple[torch.nn.Module, Any]:
        """The base quantized, earlier adapters merged into it (PEFT dequantizes, adds and requantizes:
        the merged weights are rounded to the 4/8-bit grid; the adapter being trained is exact)."""
        if not self.adapters:
            return self.base.load_quantized(quant)
        log.warning("peft.save=adapter with a quantized base: merging %d earlier adapters into 4/8-bit weights rounds them", len(self.adapters))
        model, tokenizer = self.base.load_quantized(quant)
        return merge_adapters(model, self.adapters), tokenizer


def merge_adapters(model: torch.nn.Module, adapters: Sequence[str]) -> torch.nn.Module:
    from peft import PeftModel

    for folder in adapters:
        if not (Path(folder) / "adapter_model.safetensors").is_file():  # srl writes safetensors; PEFT would unpickle a .bin
            raise FileNotFoundError(f"{folder}: no adapter_model.safetensors (srl saves adapters as safetensors and loads no pickle)")
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return model.train()


def save_trained(model: torch.nn.Module, tokenizer: Any, base: Any, settings: PeftSettings, folder: Path) -> Path:
    """Write the trained model of a stage to ``folder`` (atomically, through ``folder``.tmp).

    Full fine-tuning and ``save: merged`` write a plain ``save_pretrained`` folder; ``save: adapter``
    writes the adapter alone (with the tokenizer). ``base`` is the spec the model was loaded from,
    needed to merge a quantized run's adapter into full-precision weights.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    rundir.remove(tmp)  # srl/core/rundir.py: refused outside the run dir being worked in
    model.eval()
    if not settings.enabled:
        save_model(model, tokenizer, tmp)
    elif settings.save == "adapter":
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    elif settings.quantization == "none":
        save_model(model.merge_and_unload(), tokenizer, tmp)
    else:
        adapter_dir = folder.with_name(folder.name + ".adapter.tmp")
        rundir.remove(adapter_dir)
        model.save_pretrained(adapter_dir, safe_serialization=True)
        del model
        full, _ = base.load()
        save_model(merge_adapters(full, [str(adapter_dir)]).eval(), tokenizer, tmp)
        rundir.remove(adapter_dir)
    rundir.replace(tmp, folder)
    return folder


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as stored (two values a byte)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
