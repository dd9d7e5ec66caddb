"""Seeds derived from names (every random draw: run seed, iteration, stage, item) and config fingerprints."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def config_fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (run seed, stage, item, ...) that does not depend on Python's hash salt."""
    import hashlib

    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
