"""What the benchmark scripts share, so that each script is the comparison it makes: the prompt
sets they sample, loading a model by name, and the line that says which machine measured.

Run the scripts from the repository root (``python experiments/bench_*.py``); this file is
imported as ``common`` from the script's own folder.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import random
import resource
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PROMPTS_FILE = SHARED_DATA / "prompts" / "user_oriented_instructions.jsonl"  # self-instruct's 252 user-oriented prompts
OASST_VALIDATION = SHARED_DATA / "oasst1" / "en_validation.jsonl"


def self_instruct_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    """Instruction (+ its first input) of each row of a self-instruct JSONL file."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["instruction"] + ("\n\n" + r["instances"][0]["input"] if r.get("instances") and r["instances"][0].get("input") else "")).strip()
            for r in rows]


def sample_prompts(count: int, seed: int | None = None, path: Path = PROMPTS_FILE) -> tuple[list[str], str]:
    """``count`` prompts and where they came from: a seeded sample of the shared self-instruct set
    (``seed`` None: its first ones, cycled), or the first turns of srl's seed data where it is absent."""
    if path.is_file():
        texts, source = self_instruct_prompts(path), str(path)
    else:
        from srl.data.oasst import SEED_OASST, first_turns, load_local

        texts, source = [t.prompt.text for t in first_turns(load_local(SEED_OASST))], str(SEED_OASST)
    if seed is not None and count <= len(texts):
        return random.Random(seed).sample(texts, count), source
    return [texts[i % len(texts)] for i in range(count)], source


def load_model(name: str, dtype: str = "float32", dropout: float | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of ``name``: ``embedded``, a model folder or a Hub id (``spec_from_name``);
    ``dropout`` set on every dropout module when given (0.0 for timing and gradient comparisons)."""
    from srl.models.embedded import spec_from_name
    from srl.training.sft import set_dropout

    model, tokenizer = spec_from_name(name, dtype=dtype).load()
    if dropout is not None:
        set_dropout(model, dropout)
    return model, tokenizer


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux


def machine() -> dict[str, Any]:
    """The machine and package versions a figure was measured with (one line in every write-up)."""
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    versions = {}
    for name in ("torch", "transformers", "lightning", "peft", "trl", "vllm"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "platform": platform.platform(), **versions}


def machine_line(info: dict[str, Any] | None = None) -> str:
    return "machine: " + ", ".join(f"{k}={v}" for k, v in (info or machine()).items() if v is not None)
