"""The weight format of the engine's copy of a model: generation reads every weight once per decode
step, so a 16-bit copy halves the bytes a generated token costs. Training and log-probs keep the
model as configured (``ModelSlot.get(..., train=True)`` reloads it).

``conf/backend/hf.yaml``: ``weights: auto`` converts a float32 model to bfloat16 where the hardware
computes bfloat16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), and leaves it as
loaded elsewhere; ``float32`` / ``bfloat16`` / ``float16`` force a format; ``as_loaded`` never converts.
Quantized models (bitsandbytes) are left as they are.

On a CPU, a bfloat16 copy's linear layers are also packed (``PackedLinear``): each weight reordered once
into oneDNN's blocked layout, which a decode step's small matrix products (one row per sequence) read
faster than the plain (out, in) layout; the products are the same kernel's, so logits are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "as_loaded", "float32", "bfloat16", "float16")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class EngineSettings:
    """``conf/backend/hf.yaml``: srl's own engine on the model in memory; ``weights``: the generation copy's format."""

    weights: str = "auto"

    def __post_init__(self) -> None:
        if self.weights not in WEIGHTS:
            raise ValueError(f"backend.weights must be one of {', '.join(WEIGHTS)}; got {self.weights!r}")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU computes bfloat16 dot products in hardware (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def floating_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The dtype of the model's floating-point parameters (the first one's), None if it has none."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def generation_dtype(weights: str, model: torch.nn.Module) -> torch.dtype | None:
    """The dtype the engine's copy of ``model`` gets under ``weights``; None: leave it as loaded."""
    if weights == "as_loaded" or getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        return None
    current = floating_dtype(model)
    if weights == "auto":
        if current != torch.float32:
            return None
        device = next(model.parameters()).device
        native = torch.cuda.is_bf16_supported() if device.type == "cuda" else device.type == "cpu" and cpu_has_native_bf16()
        return torch.bfloat16 if native else None
    target = DTYPES[weights]
    return None if target == current else target


def to_generation_format(model: torch.nn.Module, weights: str) -> torch.dtype | None:
    """Convert ``model`` in place to its generation format; returns the new dtype (None: unchanged).
    A model converted to bfloat16 on a CPU also gets its linear layers packed (``pack_linears``)."""
    target = generation_dtype(weights, model)
    if target is not None:
        model.to(target)
        if target == torch.bfloat16 and next(model.parameters()).device.type == "cpu":
            pack_linears(model)
    return target


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` for inference on a CPU, its weight reordered once into oneDNN's blocked layout.

    The weight is held as a plain attribute (not a parameter: it has no strided storage), so the module
    is for generation only; ``ModelSlot`` reloads the model as configured for training and log-probs."""

    def __init__(self, linear: torch.nn.Linear, packed: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = packed
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def _pack(linear: torch.nn.Linear) -> PackedLinear | None:
    """The packed module if oneDNN packs this layer and gives the same products on a probe, else None."""
    weight = linear.weight.detach()
    try:
        packed = PackedLinear(linear, torch.ops.mkldnn._reorder_linear_weight(weight, 16))
        with torch.no_grad():
            probe = torch.randn(3, linear.in_features, generator=torch.Generator().manual_seed(0)).to(weight.dtype)
            same = torch.equal(packed(probe), torch.nn.functional.linear(probe, weight, linear.bias))
    except (RuntimeError, AttributeError) as error:  # a torch without oneDNN's ops, or a layer they reject
        log.info("generation copy: linear layers left unpacked (%s)", error)
        return None
    return packed if same else None


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every plain bfloat16 ``nn.Linear`` of ``model`` on a CPU by a ``PackedLinear``; returns how many.

    Models with adapters (PEFT) or placed across devices by a device map are left as they are; so is
    packing stops at the first layer that oneDNN rejects or whose products on a probe differ from the plain layer's."""
    if not torch.backends.mkldnn.is_available() or getattr(model, "peft_config", None) or getattr(model, "hf_device_map", None):
        return 0
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child.weight.dtype != torch.bfloat16 or child.weight.device.type != "cpu":
                continue
            packed = _pack(child)
            if packed is None:
                return count
            setattr(parent, name, packed)
            count += 1
    return count
