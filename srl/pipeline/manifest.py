"""Stage bookkeeping for a run directory: which stages finished, with which config, metrics and files.

A stage writes its outputs under temporary names, renames them when complete, then records itself
in ``manifest.json``: its config fingerprint and the values it covers, its metrics, its outputs as
paths relative to the run dir, and the size and SHA-256 of every output file. Started again with the
same run dir (or a copy of it, or the same dir moved), the loop skips recorded stages whose files
still match; a stage recorded with a different fingerprint is an error naming the keys that differ.
A finished model whose files changed is refused with the path; changed records are made again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from srl.core import distributed, rundir
from srl.core.rundir import StageConfigMismatch, Stamp, link_or_copy  # noqa: F401  (part of this module's API)
from srl.data.records import write_json

log = logging.getLogger(__name__)


VERSION = 2  # 2: outputs relative to the run dir, with file checksums; 1 (unversioned): absolute paths


class ManifestError(RuntimeError):
    """``manifest.json`` cannot be read or does not say what srl needs; the message names the file."""


class CorruptedOutput(RuntimeError):
    """A finished model's files no longer match their recorded checksums."""


def is_model_stage(stage: str) -> bool:
    return re.fullmatch(r"m\d+", stage) is not None


def find_manifests(root: str | Path, exclude: str | Path) -> list["Manifest"]:
    """Manifests of the finished or half-finished runs under ``root`` (the dir itself and up to two
    levels below: a sweep dir's jobs), except the run at ``exclude``; in path order. One that cannot
    be read is left out with a warning naming it (they are only read, never changed)."""
    root, exclude = Path(root), Path(exclude).resolve()
    if not root.is_dir():
        return []
    paths = [root / "manifest.json"] + sorted(root.glob("*/manifest.json")) + sorted(root.glob("*/*/manifest.json"))
    found = []
    for p in paths:
        if p.is_file() and p.parent.resolve() != exclude:
            try:
                found.append(Manifest(p.parent))
            except ManifestError as exc:
                log.warning("reuse_from: %s; its stages are not reused", exc)
    return found


class Manifest:
    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.data: dict[str, Any] = {"version": VERSION, "stages": {}}
        if self.path.exists():
            self.data = self._load()

    # -- reading and checking the file ----------------------------------------------------------
    def _error(self, what: str) -> ManifestError:
        return ManifestError(
            f"{self.path}: {what}. This file is srl's record of the stages finished in {self.run_dir}: restore it "
            "(from a backup or the run dir it was copied from), or delete it to run every stage again "
            "(their outputs are then rewritten)"
        )

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise self._error(f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}; an empty or cut-off file)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._error(f"cannot be read ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise self._error("has no 'stages' object")
        for stage, entry in data["stages"].items():
            if not isinstance(entry, dict):
                raise self._error(f"stage '{stage}' is not an object")
            if not isinstance(entry.get("fingerprint"), str):
                raise self._error(f"stage '{stage}' has no 'fingerprint' string")
            outputs = entry.get("outputs", [])
            if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
                raise self._error(f"stage '{stage}': 'outputs' is not a list of paths")
            entry["outputs"] = [self._relative(o, stage) for o in outputs]
            for field in ("metrics", "files", "config"):
                if not isinstance(entry.setdefault(field, {}), dict):
                    raise self._error(f"stage '{stage}': '{field}' is not an object")
        data["version"] = VERSION
        return data

    def _relative(self, output: str | os.PathLike, stage: str) -> str:
        """``output`` relative to the run dir; one outside it (absolute, '..', a symlink out) is an error."""
        path = Path(output)
        full = path if path.is_absolute() else self.run_dir / path
        if not rundir.is_inside(full, self.run_dir) or rundir.resolved(full) == rundir.resolved(self.run_dir):
            raise self._error(
                f"stage '{stage}' lists output {output}, which is outside this run dir. srl does not follow it (it would "
                "read, replace or delete another run's files); a manifest written before srl kept paths relative to the "
                "run dir holds absolute ones. Make the path relative to the run dir, or delete the stage's entry to run it again"
            )
        return Path(os.path.relpath(rundir.resolved(full), rundir.resolved(self.run_dir))).as_posix()

    # -- queries ------------------------------------------------------------------------------------
    def outputs(self, stage: str) -> list[Path]:
        return [self.run_dir / o for o in self.data["stages"].get(stage, {}).get("outputs", [])]

    def recorded(self, stage: str, fingerprint: str) -> bool:
        """Whether ``stage`` is recorded as finished with ``fingerprint`` (no checks, no errors)."""
        entry = self.data["stages"].get(stage)
        return entry is not None and entry["fingerprint"] == fingerprint

    def metrics(self, stage: str) -> dict[str, Any]:
        return dict(self.data["stages"].get(stage, {}).get("metrics", {}))

    def done(self, stage: str, stamp: Stamp) -> bool:
        """Whether ``stage`` finished with this config and its files are as recorded.

        Another config: ``StageConfigMismatch``. Outputs gone: False (the stage runs again). Files
        changed: a model stage raises ``CorruptedOutput`` with the paths; a records stage runs again.
        """
        entry = self.data["stages"].get(stage)
        if entry is None:
            return False
        if entry["fingerprint"] != stamp.fingerprint:
            recorded = Stamp(stage, entry["fingerprint"], entry.get("config") or {})
            raise rundir.mismatch(stage, f"its finished outputs in {self.run_dir}", recorded, stamp,
                                  "delete that stage's outputs and its entry in manifest.json")
        missing = [str(o) for o in self.outputs(stage) if not o.exists()]
        if missing:
            log.warning("stage '%s' is recorded as finished but %s is missing: running it again", stage, missing)
            self.forget(stage)
            return False
        problems = distributed.on_main(lambda: rundir.verify(self.run_dir, entry.get("files", {}))) or []
        if problems and is_model_stage(stage):
            raise CorruptedOutput(
                f"stage '{stage}' finished, but its model's files no longer match the checksums recorded then: "
                + "; ".join(problems) + ". Later stages were made from that model. Restore the files (or the run dir from a "
                f"backup), or start a new run dir; to train {stage} again here, delete {', '.join(map(str, self.outputs(stage)))} "
                f"and the '{stage}' entry of {self.path} (and every later stage)"
            )
        if problems:
            log.warning("stage '%s': its outputs changed since it finished (%s): running it again", stage, "; ".join(problems))
            self.forget(stage)
            return False
        return True

    # -- changes ------------------------------------------------------------------------------------
    def forget(self, stage: str) -> list[Path]:
        """Drop ``stage``'s entry (it will run again); returns the outputs it had recorded (in this run dir)."""
        outputs = self.outputs(stage)
        self.data["stages"].pop(stage, None)
        write_json(self.path, self.data)
        return outputs

    def record(self, stage: str, stamp: Stamp, metrics: dict[str, Any], outputs: list[str | Path],
               files: dict[str, dict[str, Any]] | None = None, reused_from: str | None = None) -> None:
        """Record ``stage`` as finished: outputs relative to the run dir, each file's size and SHA-256."""
        relative = [self._relative(o, stage) for o in outputs]
        if files is None:
            files = distributed.on_main(lambda: rundir.digest(self.run_dir, relative)) or {}
        entry = {"fingerprint": stamp.fingerprint, "config": stamp.config, "metrics": metrics, "outputs": relative,
                 "files": files, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if reused_from is not None:
            entry["reused_from"] = reused_from
        self.data["stages"][stage] = entry
        write_json(self.path, self.data)

    def adopt(self, stage: str, stamp: Stamp, sources: list["Manifest"]) -> dict[str, Any] | None:
        """Link ``stage``'s outputs from the first source run that finished it with the same fingerprint.

        Fingerprints cover every config section the stage depends on, its predecessors' included,
        so equal fingerprints mean equal inputs. A source whose files no longer match its checksums
        is passed over. Outputs are placed at the same paths relative to this run dir (the source is
        only read) and the stage is recorded here with the source's metrics and where they came
        from; returns those metrics, or None when no source has the stage.
        """
        for source in sources:
            entry = source.data["stages"].get(stage)
            if entry is None or entry["fingerprint"] != stamp.fingerprint:
                continue
            if not all(o.exists() for o in source.outputs(stage)):
                continue
            problems = distributed.on_main(lambda: rundir.verify(source.run_dir, entry.get("files", {}))) or []
            if problems:
                log.warning("stage %s: not reused from %s, whose files changed since it finished: %s", stage, source.run_dir, "; ".join(problems))
                continue
            for rel in entry["outputs"]:
                # every rank adopts the same record; rank 0 links the files
                distributed.on_main(lambda: link_or_copy(source.run_dir / rel, rundir.check(self.run_dir / rel, "replace")))
            files = entry.get("files") or None  # a source recorded without checksums: computed here
            self.record(stage, stamp, dict(entry.get("metrics", {})), list(entry["outputs"]), files, reused_from=str(source.run_dir))
            log.info("stage %s: reused from %s", stage, source.run_dir)
            return dict(entry.get("metrics", {}))
        return None
