"""Stage bookkeeping for a run directory: which stages finished, with which config and metrics.

A stage writes its outputs under temporary names, renames them when complete, then records itself
in ``manifest.json``. Started again with the same run dir, the loop skips recorded stages; a stage
recorded with a different config fingerprint is an error, since its outputs would not match the
config asked for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from srl import distributed
from srl.records import write_json

log = logging.getLogger(__name__)


class StageConfigMismatch(RuntimeError):
    pass


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link ``src`` (a file or a folder tree) to ``dest``, copying where links are impossible.

    Stage outputs are never modified in place (they are written under temporary names and renamed),
    so a linked file cannot change under the run it came from.
    """
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if dest.is_dir():
        shutil.rmtree(dest)
    elif dest.exists():
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, copy_function=link)
    else:
        link(str(src), str(dest))


def find_manifests(root: str | Path, exclude: str | Path) -> list["Manifest"]:
    """Manifests of the finished or half-finished runs under ``root`` (the dir itself and up to two
    levels below: a sweep dir's jobs), except the run at ``exclude``; in path order."""
    root, exclude = Path(root), Path(exclude).resolve()
    if not root.is_dir():
        return []
    paths = [root / "manifest.json"] + sorted(root.glob("*/manifest.json")) + sorted(root.glob("*/*/manifest.json"))
    return [Manifest(p.parent) for p in paths if p.is_file() and p.parent.resolve() != exclude]


class Manifest:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))

    def done(self, stage: str, fingerprint: str) -> bool:
        entry = self.data["stages"].get(stage)
        if entry is None:
            return False
        if entry["fingerprint"] != fingerprint:
            raise StageConfigMismatch(
                f"stage '{stage}' in {self.path.parent} was finished with a different config "
                f"(fingerprint {entry['fingerprint']}, now {fingerprint}); start a new run dir "
                f"(hydra.run.dir=...) or delete that stage's outputs and its manifest entry"
            )
        missing = [o for o in entry.get("outputs", []) if not Path(o).exists()]
        if missing:
            log.warning("stage '%s' is recorded as finished but %s is missing: running it again", stage, missing)
            del self.data["stages"][stage]
            return False
        return True

    def recorded(self, stage: str, fingerprint: str) -> bool:
        """Whether ``stage`` is recorded as finished with ``fingerprint`` (no checks, no errors)."""
        entry = self.data["stages"].get(stage)
        return entry is not None and entry["fingerprint"] == fingerprint

    def forget(self, stage: str) -> list[str]:
        """Drop ``stage``'s entry (it will run again); returns the outputs it had recorded."""
        entry = self.data["stages"].pop(stage, None)
        write_json(self.path, self.data)
        return list(entry.get("outputs", [])) if entry else []

    def metrics(self, stage: str) -> dict[str, Any]:
        return dict(self.data["stages"].get(stage, {}).get("metrics", {}))

    def record(self, stage: str, fingerprint: str, metrics: dict[str, Any], outputs: list[str]) -> None:
        self.data["stages"][stage] = {
            "fingerprint": fingerprint,
            "metrics": metrics,
            "outputs": outputs,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        write_json(self.path, self.data)

    def adopt(self, stage: str, fingerprint: str, sources: list["Manifest"]) -> dict[str, Any] | None:
        """Link ``stage``'s outputs from the first source run that finished it with ``fingerprint``.

        Fingerprints cover every config section the stage depends on, its predecessors' included,
        so equal fingerprints mean equal inputs. Outputs are placed at the same paths relative to
        this run dir and the stage is recorded here with the source's metrics (and where they came
        from); returns those metrics, or None when no source has the stage.
        """
        for source in sources:
            entry = source.data["stages"].get(stage)
            if entry is None or entry["fingerprint"] != fingerprint:
                continue
            outputs = [Path(o) for o in entry.get("outputs", [])]
            if not all(o.exists() for o in outputs):
                continue
            mine = []
            for out in outputs:
                dest = self.run_dir / os.path.relpath(out.resolve(), source.run_dir.resolve())
                if distributed.is_main():  # every rank adopts the same record; rank 0 links the files
                    link_or_copy(out, dest)
                mine.append(str(dest))
            metrics = dict(entry.get("metrics", {}))
            self.record(stage, fingerprint, metrics, mine)
            self.data["stages"][stage]["reused_from"] = str(source.run_dir)
            write_json(self.path, self.data)
            log.info("stage %s: reused from %s", stage, source.run_dir)
            return metrics
        return None
