"""A JSONL file written in resumable chunks (``PartialJsonl``): how the generation stages keep their
work across a kill, stamped with the config that wrote it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from srl.core import distributed, rundir
from srl.data.records import atomic_write_text, read_jsonl, read_text, to_json_line

log = logging.getLogger(__name__)


class PartialJsonl:
    """A JSONL file written in chunks under ``<name>.partial`` and renamed when complete.

    Each chunk is appended and fsynced, so a stopped run keeps every finished chunk; on restart,
    a torn last line (a crash mid-write) is dropped and the records read back.

    With a ``stamp`` (``rundir.Stamp``: the stage and its config), the stamp is written beside the
    partial file before its first chunk (``<name>.partial.stage.json``), and opening a partial file
    whose stamp differs raises ``StageConfigMismatch``: records of two configs are never mixed.
    """

    def __init__(self, path: str | os.PathLike, cls: type, stamp: rundir.Stamp | None = None, on_stale: str = "error") -> None:
        """``on_stale``: what a partial file of another config does: ``error`` (refused) or ``discard``
        (deleted, with a warning: for derived outputs such as evaluations, which rerun on a changed config)."""
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.stamp_path = self.path.with_name(self.path.name + ".partial.stage.json")
        self.cls, self.stamp = cls, stamp
        if self.is_stale():
            if on_stale == "discard":
                log.warning("%s was written under another config: discarded, its records are made again", self.partial)
                self.discard()
            else:
                rundir.check_stamp(self.stamp_path, stamp, f"the half-finished {self.partial}", f"delete {self.partial} to redo its records")

    def is_stale(self) -> bool:
        """Whether a partial file exists that another config (or an unstamped run) wrote."""
        if self.stamp is None or not self.partial.is_file():
            return False
        recorded = rundir.read_stamp(self.stamp_path)
        return recorded is None or recorded.fingerprint != self.stamp.fingerprint

    def discard(self) -> None:
        """Delete the partial file and its stamp (the stage starts its records over)."""
        if distributed.is_main():
            rundir.remove(self.partial)
            rundir.remove(self.stamp_path)
        distributed.barrier()

    def read(self, chunk: int = 1) -> list[Any]:
        """Records already written, cut back to a whole number of ``chunk``-record chunks."""
        if not self.partial.is_file():
            return []
        raw = read_text(self.partial)
        lines = raw.split("\n")[:-1]  # a torn last line (no newline yet) is dropped
        keep = len(lines) - len(lines) % chunk
        if keep != len(lines) or not raw.endswith("\n") and raw:
            atomic_write_text(self.partial, "".join(line + "\n" for line in lines[:keep]))
        distributed.barrier()  # every rank reads the file as rank 0 left it
        return read_jsonl(self.partial, self.cls)

    def keep(self, count: int) -> None:
        """Cut the partial file back to its first ``count`` records (a unit of work cut short)."""
        if self.partial.is_file():
            lines = read_text(self.partial).split("\n")[:-1]
            atomic_write_text(self.partial, "".join(line + "\n" for line in lines[:count]))

    def append(self, records: Iterable[Any]) -> None:
        if not distributed.is_main():
            return
        rundir.check(self.partial)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        if self.stamp is not None and not self.partial.exists():
            rundir.write_stamp(self.stamp_path, self.stamp)  # before the first chunk: a partial file always has its stamp
        with self.partial.open("a", encoding="utf-8") as fh:
            fh.write("".join(to_json_line(r) + "\n" for r in records))
            fh.flush()
            os.fsync(fh.fileno())

    def finish(self) -> Path:
        if distributed.is_main():
            if not self.partial.exists():
                atomic_write_text(self.partial, "")
            rundir.replace(self.partial, self.path)
            rundir.remove(self.stamp_path)
        distributed.barrier()  # the final file exists on every rank's return
        return self.path
