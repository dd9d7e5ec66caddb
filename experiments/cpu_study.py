"""The CPU study's tables (``experiments/cpu_study.md``) from its sweep dir: judge quality of M0, the
SFT baseline (IFT only), M1, M2, M3 with intervals and the length baseline, then the judge-free
measures and head-to-heads, then the preference set.

    python -m srl.run -m +experiment=cpu_study hydra.sweep.dir=multirun/cpu_study/mine
    python experiments/cpu_study.py multirun/cpu_study/mine            # writes <dir>/study.md and prints it
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from srl.evaluation.report import write_table


def rows(sweep_dir: Path) -> list[tuple[str, dict]]:
    """(model, its eval metrics) for M0 and the SFT baseline (job 0), then M1..M3 (job 1)."""
    jobs = {}
    for d in sorted(p for p in sweep_dir.iterdir() if (p / "manifest.json").is_file()):
        # The manifest holds every finished stage's metrics, also of a job stopped part way.
        summary = {}
        for stage in json.loads((d / "manifest.json").read_text())["stages"].values():
            summary.update(stage.get("metrics", {}))
        overrides = (d / ".hydra" / "overrides.yaml").read_text() if (d / ".hydra" / "overrides.yaml").is_file() else ""
        jobs["sft_baseline" if "study=sft_baseline" in overrides else "self_rewarding"] = summary
    out = []

    def model(summary: dict, t: int, name: str) -> None:
        prefix = f"eval/m{t}/"
        metrics = {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}
        if metrics:
            out.append((name, metrics))

    base, loop = jobs.get("sft_baseline", {}), jobs.get("self_rewarding", {})
    model(loop or base, 0, "M0 (SmolLM2-135M-Instruct)")
    model(base, 1, "SFT baseline (IFT only)")
    for t in (1, 2, 3):
        model(loop, t, f"M{t}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    path = args.sweep_dir / "study.md"
    write_table(path, "CPU study: SmolLM2-135M-Instruct, self-rewarding on oasst1", rows(args.sweep_dir), f"Sweep dir {args.sweep_dir}.")
    print(path.read_text())


if __name__ == "__main__":
    main()
