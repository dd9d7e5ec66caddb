"""What srl may do to a run directory, and how it checks what it finds there.

Three guarantees (the manifest, ``srl/pipeline/manifest.py``, builds on them):

- **Writes stay inside the run dir.** While a run works in a run dir (``working_in``), every write,
  rename, link and delete srl makes goes through ``check`` (directly or through ``remove``,
  ``replace``, ``link_or_copy`` and ``atomic_write_text``), which refuses a path that
  resolves outside it, symlinks followed. Another run's files, a sweep's other jobs and the
  ``reuse_from`` source are only ever read.
- **Outputs are checked.** ``digest`` records the size and SHA-256 of every file of a stage's
  outputs; ``verify`` compares them with what is on disk.
- **Half-finished work carries its config.** A ``Stamp`` (stage, fingerprint, the config values the
  fingerprint covers) is written beside a stage's partial files and checkpoints; resuming them
  under another config raises ``StageConfigMismatch`` naming the keys that differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

from srl.core import distributed

_ROOTS: list[Path] = []  # the run dirs being worked in, innermost last (a module global: Lightning may call back from threads)


class OutsideRunDir(RuntimeError):
    """srl was about to write, move or delete a path outside the run dir it works in."""


class StageConfigMismatch(RuntimeError):
    """A stage's finished or half-finished outputs were made with another config."""


@contextlib.contextmanager
def working_in(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Confine srl's writes to ``run_dir`` while the block runs."""
    root = Path(run_dir).resolve()
    _ROOTS.append(root)
    try:
        yield root
    finally:
        _ROOTS.remove(root)


def current() -> Path | None:
    return _ROOTS[-1] if _ROOTS else None


def resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path)).resolve()


def is_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    return resolved(path).is_relative_to(resolved(root))


def check(path: str | os.PathLike, action: str = "write") -> Path:
    """``path`` if srl may ``action`` it: inside the current run dir and not the run dir itself
    (any path when no run is active, as in a library call); else ``OutsideRunDir``."""
    root = current()
    path = Path(path)
    if root is None:
        return path
    # A delete or a rename acts on the entry itself (a symlink, not what it points to); a write follows it.
    target = resolved(path.parent) / path.name if action in ("delete", "replace") and path.name not in ("", ".", "..") else resolved(path)
    if not target.is_relative_to(root) or target == root:
        raise OutsideRunDir(
            f"srl refused to {action} {path} (resolves to {target}): it is not inside the run dir {root}. "
            "srl only changes files under the run dir it works in; a manifest or config that points elsewhere "
            "(an absolute path, '..', a symlink) is not followed for writes"
        )
    return path


def remove(path: str | os.PathLike) -> None:
    """Delete a file or folder tree inside the run dir (a symlink: the link only); missing is fine."""
    path = check(path, "delete")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def replace(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """``os.replace`` of a finished temporary file or folder onto its final name (a folder there is removed first)."""
    check(src, "move")
    dest = check(dest, "replace")
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    os.replace(src, dest)


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` (a file or a folder tree) to ``dest``, copying where links are impossible.

    ``src`` is only read. Stage outputs are never modified in place (written under temporary names
    and renamed), so a linked file cannot change under the run it came from.
    """
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    remove(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link)
    else:
        link(str(src), str(dest))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename (rank 0 only:
    in a multi-process run every rank holds the same records, ``srl/core/distributed.py``)."""
    if not distributed.is_main():
        return
    path = check(path)  # inside the run dir being worked in
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- checksums ---------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _files(run_dir: Path, outputs: list[str]) -> list[str]:
    found = []
    for out in outputs:
        path = run_dir / out
        if path.is_dir():
            found += sorted(p.relative_to(run_dir).as_posix() for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            found.append(Path(out).as_posix())
    return found


def digest(run_dir: str | os.PathLike, outputs: list[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file of ``outputs`` (paths relative to ``run_dir``), by relative path.

    Files are hashed in parallel threads (hashlib releases the GIL); SHA-256 runs at about 1.5 GB/s
    a core, so a 135M model in float32 (0.54 GB) takes 0.4 s and a 70B model's 140 GB of bf16
    shards about 90 s on one core, less on several.
    """
    run_dir = Path(run_dir)
    names = _files(run_dir, outputs)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        hashes = list(pool.map(lambda n: _sha256(run_dir / n), names))
    return {n: {"size": (run_dir / n).stat().st_size, "sha256": h} for n, h in zip(names, hashes)}


def verify(run_dir: str | os.PathLike, files: dict[str, dict[str, Any]]) -> list[str]:
    """What differs between ``files`` (from ``digest``) and the disk: one line per file, [] if all match."""
    run_dir = Path(run_dir)
    problems, to_hash = [], []
    for name, want in sorted(files.items()):
        path = run_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != want["size"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, recorded {want['size']}")
        else:
            to_hash.append(name)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for name, got in zip(to_hash, pool.map(lambda n: _sha256(run_dir / n), to_hash)):
            if got != files[name]["sha256"]:
                problems.append(f"{run_dir / name}: content changed (sha256 {got[:12]}, recorded {files[name]['sha256'][:12]})")
    return problems


# -- stage stamps ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stamp:
    """Which stage, under which config, wrote some half-finished state (``config``: the flat values
    its fingerprint covers, ``srl.pipeline.fingerprints.stage_inputs``; may be empty)."""

    stage: str
    fingerprint: str
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "fingerprint": self.fingerprint, "config": self.config}


def config_diff(old: dict[str, Any] | None, new: dict[str, Any] | None, limit: int = 12) -> str:
    """``key: old -> new`` for each differing key ('' when either side is unknown)."""
    if not old or not new:
        return ""
    missing = object()
    keys = sorted(k for k in set(old) | set(new) if old.get(k, missing) != new.get(k, missing))
    shown = [f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}" for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(shown) + more


def mismatch(stage: str, what: str, recorded: Stamp | None, wanted: Stamp, remedy: str) -> StageConfigMismatch:
    """The error for ``what`` (a stage's outputs, partial file or checkpoint) made under ``recorded``."""
    if recorded is None:
        why = "it has no record of its config (written by an older srl)"
    else:
        diff = config_diff(recorded.config, wanted.config)
        why = f"config fingerprint {recorded.fingerprint}, now {wanted.fingerprint}" + (f"; changed: {diff}" if diff else "")
    return StageConfigMismatch(
        f"stage '{stage}': {what} was made with a different config ({why}). Resuming would mix outputs of two configs. "
        f"Start a new run dir (hydra.run.dir=...), or go back to the config it was made with, or {remedy}"
    )


def write_stamp(path: Path, stamp: Stamp) -> None:
    atomic_write_text(path, json.dumps(stamp.to_json(), indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def read_stamp(path: Path) -> Stamp | None:
    """The stamp at ``path``; None if there is none or it cannot be read (treated as unknown config)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Stamp(str(data["stage"]), str(data["fingerprint"]), dict(data.get("config") or {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_stamp(path: Path, wanted: Stamp, what: str, remedy: str) -> None:
    """Refuse to resume half-finished state whose stamp at ``path`` is not ``wanted``."""
    recorded = read_stamp(path)
    if recorded is None or recorded.fingerprint != wanted.fingerprint:
        raise mismatch(wanted.stage, what, recorded, wanted, remedy)
