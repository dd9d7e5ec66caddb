"""Where the Hydra configs live, and the resolver that lets ``conf/config.yaml`` find ``sweeps/``.

``conf/`` (config groups) and ``sweeps/`` (one ablation per file) sit at the repository top level,
so srl runs from a source checkout or an editable install (``pip install -e .``). The root config
puts the repository root on Hydra's search path through ``${srl_root:}``, which makes
``sweeps/judge_format.yaml`` the config ``judge_format`` of the group ``sweeps``:
``python -m srl.run -m +sweeps=judge_format``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]  # the repository root


CONF_DIR = ROOT / "conf"


SWEEPS_DIR = ROOT / "sweeps"


def register_resolvers() -> None:
    """Register ``${srl_root:}`` (idempotent); call before Hydra composes the config."""
    if not OmegaConf.has_resolver("srl_root"):
        OmegaConf.register_new_resolver("srl_root", lambda: str(ROOT))
