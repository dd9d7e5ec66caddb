"""A non-editable install works without the checkout: the wheel carries every config and sweep,
the entry points compose the packaged configs from any folder, and a user's own config dir adds
to srl's without copying it (srl/config/paths.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT
from srl.config.paths import layout

SCRIPTS = {"srl-run": "srl.run:main", "srl-evaluate": "srl.evaluate:main", "srl-compare": "srl.compare:main",
           "srl-prepare-data": "srl.prepare_data:main"}


def test_every_package_of_srl_is_listed_in_pyproject():
    """setuptools' package list is explicit (find cannot see conf/ mapped into srl/conf): a new
    subpackage left out of it would be missing from every wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "srl").rglob("__init__.py")}
    assert on_disk <= listed, f"missing from pyproject.toml [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert listed - on_disk == {"srl.conf", "srl.conf.sweeps"}


def test_layout_prefers_packaged_configs(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "srl").mkdir(parents=True)
    assert layout(checkout / "srl") == (checkout / "conf", checkout)
    (checkout / "srl" / "conf").mkdir()
    (checkout / "srl" / "conf" / "config.yaml").write_text("seed: 0\n")
    assert layout(checkout / "srl") == (checkout / "srl" / "conf", checkout / "srl" / "conf")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """srl built as a wheel and installed (no deps: the test venv has them) into a target folder."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "wheel")],
                   check=True, cwd=tmp, env={**os.environ, "PIP_NO_INPUT": "1"})
    wheel = next((tmp / "wheel").glob("srl-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"srl/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    expected |= {f"srl/conf/sweeps/{p.name}" for p in (ROOT / "sweeps").glob("*.yaml")}
    assert expected <= names, f"configs missing from the wheel: {sorted(expected - names)}"
    assert "srl/data/seed_oasst.jsonl" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in text
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), str(wheel)], check=True, cwd=tmp)
    return tmp / "site"


def run_outside(site: Path, args: list[str], cwd: Path) -> str:
    """Run ``args`` from ``cwd`` (not the checkout) with the installed copy first on the path."""
    env = {**os.environ, "PYTHONPATH": str(site), "HYDRA_FULL_ERROR": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_installed_copy_composes_its_own_configs_and_a_user_config_dir(installed, tmp_path):
    user = tmp_path / "my_conf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("# @package _global_\ndefaults:\n  - override /model: tiny\nseed: 123\n")
    # the paths the installed copy resolves, and the sweep group found inside the packaged conf/
    out = run_outside(installed, [sys.executable, "-c", (
        "from srl.config import paths; import srl; print(srl.__file__); print(paths.CONF_DIR); "
        "print(sorted(p.name for p in paths.SWEEPS_DIR.glob('*.yaml')))")], tmp_path)
    package_file, conf_dir, sweeps = out.strip().splitlines()
    assert Path(package_file).is_relative_to(installed) and Path(conf_dir) == installed / "srl" / "conf"
    assert eval(sweeps) == sorted(p.name for p in (ROOT / "sweeps").glob("*.yaml"))
    # the console script, a user's experiment from --config-dir on top of srl's groups
    out = run_outside(installed, [sys.executable, str(installed / "bin" / "srl-run"), "--config-dir", str(tmp_path / "my_conf"),
                                  "+experiment=mine", "+sweeps=loss", "--cfg", "job"], tmp_path)
    assert "seed: 123" in out and "srl.training.tiny.TinyModelSpec" in out
    assert "dpo:" in out and "judge:" in out  # srl's own groups came with it
