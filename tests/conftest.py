"""Test setup: offline, no W&B network, and shared fixtures (tiny model, config composition)."""

from __future__ import annotations

import os

# Before transformers/huggingface_hub are imported anywhere: offline, no W&B, quiet tokenizers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
OASST_VALIDATION = SHARED_DATA / "oasst1" / "en_validation.jsonl"


@pytest.fixture(scope="session")
def oasst_validation() -> Path:
    if not OASST_VALIDATION.is_file():
        pytest.skip(f"shared data not found at {OASST_VALIDATION}")
    return OASST_VALIDATION


@pytest.fixture(scope="session")
def tiny():
    """(model, tokenizer) of the tiny Llama; tests that train must deep-copy the model."""
    from srl.training.tiny import TinyModelSpec

    return TinyModelSpec(seed=0).load()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny):
    return tiny[1]


def compose(overrides: list[str] | None = None):
    """Compose the project config as ``python -m srl.run`` would (Hydra runtime values filled)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from srl.config.paths import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides or [], return_hydra_config=True)
