"""Rows of a data set from wherever a user keeps it, each with a label that errors can name.

``read_rows(path, split)`` accepts:

- a local file: ``.jsonl`` (one JSON object a line; labels ``line N``), ``.json`` (a JSON list;
  ``item N``), either one gzipped (``.jsonl.gz``, ``.json.gz``), or ``.parquet`` (``row N``, from 1);
- a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``row i``,
  from 0; a ``DatasetDict`` is cut to ``split``);
- otherwise a Hugging Face Hub data set id (or a local data set script/folder that
  ``datasets.load_dataset`` reads), cut to ``split`` (``row i``).

The returned source string names the file or ``id (split)``; ``f"{source} {label}"`` is where a
row's error points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from srl.data.records import RecordError, iter_json_lines, loads_json, read_text

FILE_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")


def file_rows(path: Path) -> list[tuple[str, Any]]:
    """``(label, row)`` of a local JSONL/JSON (optionally gzipped) or Parquet file."""
    gz = path.suffix == ".gz"
    suffix = Path(path.stem).suffix if gz else path.suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i + 1}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    if suffix == ".json":
        data = loads_json(read_text(path), path)
        if not isinstance(data, list):
            raise RecordError(f"{path}: a .json data file should hold a JSON list of rows, got {type(data).__name__}")
        return [(f"item {i + 1}", row) for i, row in enumerate(data)]
    return [(f"line {lineno}", row) for lineno, row in iter_json_lines(path)]


def _saved(path: Path, split: str) -> tuple[str, list[tuple[str, Any]]]:
    import datasets

    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise RecordError(f"{path}: no split {split!r} in the saved data set (it has {sorted(data)})")
        data = data[split]
        source = f"{path} ({split})"
    else:
        source = str(path)
    return source, [(f"row {i}", row) for i, row in enumerate(data)]


def read_rows(path: str, split: str = "train", what: str = "data set") -> tuple[str, list[tuple[str, Any]]]:
    """``(source, [(label, row), ...])`` of a file, a saved data set folder or a Hub data set (module docstring)."""
    if not path:
        raise ValueError(f"{what}: no path (a .jsonl/.json/.parquet file, a saved data set folder or a Hub data set id)")
    local = Path(path).expanduser()
    if local.is_file():
        return str(local), file_rows(local)
    if local.name.endswith(FILE_SUFFIXES):
        raise FileNotFoundError(f"{what}: file not found: {local}")
    if local.is_dir() and ((local / "dataset_info.json").is_file() or (local / "dataset_dict.json").is_file()):
        return _saved(local, split)
    import datasets  # lazily: only Hub sets need it

    source = f"{path} ({split})"
    return source, [(f"row {i}", row) for i, row in enumerate(datasets.load_dataset(path, split=split))]
