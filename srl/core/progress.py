"""Progress bars of generation stages and the hook they call after each finished chunk."""

from __future__ import annotations

from typing import Callable

from tqdm.auto import tqdm

from srl.core import distributed

# Called after each chunk is written, with (stage, records so far); tests use it to stop a run.
ChunkHook = Callable[[str, int], None]


def progress_bar(total: int, done: int, desc: str) -> tqdm:
    return tqdm(total=total, initial=done, desc=desc, unit="item", dynamic_ncols=True, leave=False, disable=not distributed.is_main())
