"""Where the Hydra configs live, and the resolver that lets ``conf/config.yaml`` find ``sweeps/``.

``conf/`` (config groups) and ``sweeps/`` (one ablation per file) sit at the repository top level.
Two layouts, one lookup:

- **checkout or editable install** (``pip install -e .``): the configs are the checkout's
  ``conf/``; the root config puts the repository root on Hydra's search path through
  ``${srl_root:}``, which makes ``sweeps/judge_format.yaml`` the config ``judge_format`` of the
  group ``sweeps``: ``python -m srl.run -m +sweeps=judge_format``.
- **installed** (``pip install .`` or a wheel): ``pyproject.toml`` maps ``conf/`` to the package
  ``srl.conf`` and ``sweeps/`` to ``srl.conf.sweeps``, so the configs sit in
  ``site-packages/srl/conf`` with the sweeps as one of its groups, and ``${srl_root:}`` is that
  folder.

A user's own config dir goes on top of either without copying srl's: ``--config-dir DIR`` or
``hydra.searchpath=[file://DIR]`` (README, "Your own configs").
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # srl/
ROOT = PACKAGE_DIR.parent  # the repository root in a checkout; site-packages when installed


def layout(package_dir: Path) -> tuple[Path, Path]:
    """(config dir, search root) for the package folder ``package_dir``: the installed configs
    (``package_dir/conf``) where they exist, else the checkout's (``package_dir/../conf``)."""
    packaged = package_dir / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged, packaged
    return package_dir.parent / "conf", package_dir.parent


CONF_DIR, SEARCH_ROOT = layout(PACKAGE_DIR)


SWEEPS_DIR = SEARCH_ROOT / "sweeps"


def register_resolvers() -> None:
    """Register ``${srl_root:}`` (idempotent); call before Hydra composes the config."""
    if not OmegaConf.has_resolver("srl_root"):
        OmegaConf.register_new_resolver("srl_root", lambda: str(SEARCH_ROOT))
