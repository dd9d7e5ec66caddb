"""The weight format of the engine's copy of a model: generation reads every weight once per decode
step, so a 16-bit copy halves the bytes a generated token costs. Training and log-probs keep the
model as configured (``ModelSlot.get(..., train=True)`` reloads it).

``conf/backend/hf.yaml``: ``weights: auto`` converts a float32 model to bfloat16 where the hardware
computes bfloat16 natively (a CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), and leaves it as
loaded elsewhere; ``float32`` / ``bfloat16`` / ``float16`` force a format; ``as_loaded`` never converts.
Quantized models (bitsandbytes) are left as they are.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

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
    """Convert ``model`` in place to its generation format; returns the new dtype (None: unchanged)."""
    target = generation_dtype(weights, model)
    if target is not None:
        model.to(target)
    return target
