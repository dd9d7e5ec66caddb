"""Stage bookkeeping for a run directory: which stages finished, with which config and metrics.

A stage writes its outputs under temporary names, renames them when complete, then records itself
in ``manifest.json``. Started again with the same run dir, the loop skips recorded stages; a stage
recorded with a different config fingerprint is an error, since its outputs would not match the
config asked for.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from srl.records import write_json

log = logging.getLogger(__name__)


class StageConfigMismatch(RuntimeError):
    pass


class Manifest:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "manifest.json"
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
