"""Compare the jobs of a Hydra multirun: one row per job, the swept overrides as columns.

Usage::

    python -m srl.run -m +experiment=smoke generation.num_candidates=2,4,8
    python -m srl.compare multirun/2025-01-31/12-00-00 [--out DIR] [--metrics KEY_OR_GLOB ...]
    python -m srl.compare outputs/2025-01-31/12-00-00     # a single run dir: one row

srl.compare takes plain arguments rather than Hydra's: it reads finished runs and composes no
config, and Hydra would give it a run dir of its own to write into.

Every subdirectory holding ``.hydra/overrides.yaml`` or ``summary.json`` is a job (ordered by job
number). A job is labelled by the overrides that differ between jobs (``num_candidates=4``);
overrides that all jobs share go once into the header. A job without a readable summary.json is
listed as failed, never dropped. Written to ``--out`` (default: the multirun dir):

- ``compare.md``: the command, the common overrides and a table, one row per job: job number,
  one column per swept key, status, then metric columns (``default_columns`` or ``--metrics``).
- ``compare.csv`` and ``compare.json``: every numeric metric of every job.
- ``judge_quality.png``, ``by_iteration.png``, ``pairs.png`` where the metrics exist, and
  ``training.png``: per-step curves from each job's ``m{t}/train_steps.csv`` (srl/evaluation/plots.py).

A training stage reports stage statistics over its optimizer steps: ``m{t}/dpo/loss_mean``,
``_first`` and ``_last`` (likewise ``rewards/accuracy``, ``rewards/margin``, ``m1/sft/loss_*``);
summaries written before that hold a plain ``m{t}/dpo/loss``, which the default table does not
show (pick it with ``--metrics``).

``time/total_s`` is added to each job: the sum of its ``time/<stage>_s`` (seconds).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import io
import json
import logging
import math
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from srl.data.records import atomic_write_text
from srl.evaluation.plots import write_plots
from srl.evaluation.report import markdown_table

log = logging.getLogger("srl.compare")  # not __main__ under python -m

MISSING = "-"
TOTAL_TIME = "time/total_s"
LOOKED_FOR = "subdirectories holding .hydra/overrides.yaml or summary.json (one per Hydra job)"


class CompareError(Exception):
    """A multirun dir that cannot be compared: missing, holding no jobs, or an unreadable file."""


@dataclasses.dataclass
class Job:
    """One job of the multirun: ``num`` is its folder name, ``metrics`` the numeric values of its
    summary.json (plus ``time/total_s``), ``swept`` its values of the keys swept across jobs."""

    num: str
    path: Path
    overrides: list[str]
    metrics: dict[str, float]
    status: str = "ok"
    label: str = ""
    swept: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class CompareResult:
    """``rows``: the jobs in order; ``columns``: the metric columns of compare.md; ``written``: files."""

    rows: list[Job]
    columns: list[str]
    common: list[str]
    swept: list[str]
    written: list[Path]


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``iter2`` before ``iter10`` and job ``2`` before job ``10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def numeric(summary: dict[str, Any]) -> dict[str, float]:
    """The int/float values of a summary (bools, strings, tables dropped) plus ``time/total_s``."""
    out = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    times = [v for k, v in out.items() if k.startswith("time/") and k.endswith("_s") and k != TOTAL_TIME]
    if times and TOTAL_TIME not in out:
        out[TOTAL_TIME] = sum(times)
    return out


def read_job(path: Path) -> Job:
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides: list[str] = []
    if overrides_file.is_file():
        try:
            loaded = yaml.safe_load(overrides_file.read_text(encoding="utf-8")) or []
        except yaml.YAMLError as err:
            raise CompareError(f"{overrides_file}: not valid YAML ({err})") from err
        if not isinstance(loaded, list):
            raise CompareError(f"{overrides_file}: expected a YAML list of override strings, got {type(loaded).__name__}")
        overrides = [str(o) for o in loaded]
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        log.warning("job %s: no summary.json in %s (the job failed or is still running)", path.name, path)
        return Job(path.name, path, overrides, {}, status="failed: no summary.json")
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        log.warning("job %s: %s is not valid JSON (%s)", path.name, summary_file, err)
        return Job(path.name, path, overrides, {}, status="failed: summary.json unreadable")
    if not isinstance(summary, dict):
        log.warning("job %s: %s holds a %s, not a dict of metrics", path.name, summary_file, type(summary).__name__)
        return Job(path.name, path, overrides, {}, status="failed: summary.json not a dict")
    status = summary.get("status", "ok")  # the loop writes "failed at <stage>: <error>" before it re-raises
    if status != "ok":
        log.warning("job %s: %s", path.name, status)
    return Job(path.name, path, overrides, numeric(summary), status=str(status).replace("\n", " ")[:120])


def load_jobs(multirun_dir: str | Path) -> list[Job]:
    """The jobs of a multirun dir, ordered by job number; raises CompareError if there are none."""
    root = Path(multirun_dir)
    if not root.is_dir():
        raise CompareError(f"{root}: no such directory (expected a Hydra multirun dir with {LOOKED_FOR})")
    def is_job(d: Path) -> bool:
        return (d / ".hydra" / "overrides.yaml").is_file() or (d / "summary.json").is_file()

    dirs = [d for d in root.iterdir() if d.is_dir() and is_job(d)]
    if not dirs and is_job(root):  # a single run dir (python -m srl.run): one row
        return [read_job(root)]
    if not dirs:
        raise CompareError(f"{root}: no jobs found (looked for {LOOKED_FOR})")
    return [read_job(d) for d in sorted(dirs, key=lambda d: natural_key(d.name))]


def split_key(override: str) -> tuple[str, str]:
    """``+experiment=smoke`` -> (``experiment``, ``smoke``): the config key and its value."""
    key, _, value = override.partition("=")
    return key.lstrip("+"), value


def label_jobs(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """Fill each job's ``swept`` and ``label``; returns (overrides common to all jobs, swept keys)."""
    common = [o for o in jobs[0].overrides if all(o in j.overrides for j in jobs)]
    swept: list[str] = []
    for job in jobs:
        swept += [k for o in job.overrides if o not in common and (k := split_key(o)[0]) not in swept]
    # Labels use the last part of a dotted key (num_candidates=4) where that stays unambiguous.
    short = [k.rsplit(".", 1)[-1] for k in swept]
    short = short if len(set(short)) == len(short) else swept
    for job in jobs:
        values = dict(map(split_key, job.overrides))
        job.swept = {k: values.get(k, "(default)") for k in swept}
        job.label = ", ".join(f"{s}={job.swept[k]}" for s, k in zip(short, swept)) or f"job {job.num}"
    labels = [j.label for j in jobs]
    for job in jobs:
        if labels.count(job.label) > 1:
            job.label += f" (#{job.num})"
    return common, swept


def default_columns(jobs: Sequence[Job]) -> list[str]:
    """The curated table columns, in the order of the loop, kept where at least one job has them:
    M1's SFT val loss; per iteration t the judge parse-fail rate, pairs kept and mean margin and
    M_{t+1}'s DPO loss (mean over its optimizer steps, ``m{t+1}/dpo/loss_mean``); for M1 and the last evaluated model M_T judge pairwise accuracy
    beside the longer-reply baseline's, judge parse-fail rate, implicit-reward accuracy, head-to-head win rate and reply words; total time."""
    keys = {k for j in jobs for k in j.metrics}

    def found(pattern: str) -> list[int]:
        return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})

    wanted = ["m1/sft/val_loss"]
    for t in sorted(set(found(r"iter(\d+)/")) | {m - 1 for m in found(r"m(\d+)/dpo/")}):
        wanted += [f"iter{t}/judge/parse_fail_rate", f"iter{t}/pairs/kept", f"iter{t}/pairs/mean_margin", f"m{t + 1}/dpo/loss_mean"]
    evaluated = found(r"eval/m(\d+)/")
    for m in [t for t in evaluated if t == 1 or t == evaluated[-1]]:
        wanted += [f"eval/m{m}/rm/pairwise_acc", f"eval/m{m}/rm/length_pairwise_acc", f"eval/m{m}/rm/parse_fail_rate",
                   f"eval/m{m}/implicit/accuracy", f"eval/m{m}/h2h/win_rate", f"eval/m{m}/h2h/len_words_model"]
    return [k for k in wanted + [TOTAL_TIME] if k in keys]


def select_columns(jobs: Sequence[Job], patterns: Sequence[str]) -> list[str]:
    """Metric names matching each pattern (exact name or glob, ``*`` spans ``/``), in pattern order."""
    keys = sorted({k for j in jobs for k in j.metrics}, key=natural_key)
    out: list[str] = []
    for pattern in patterns:
        matched = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
        if not matched:
            log.warning("--metrics %s: no job has a metric matching it", pattern)
        out += [k for k in matched if k not in out]
    return out


def fmt_number(value: float) -> str:
    """Ints as ints; floats to 3 significant digits (0.693, 12.3, 0.000123), whole above 1000."""
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and abs(value) >= 1000:
        return f"{value:.0f}"
    return f"{value:.3g}"


def cell(metrics: dict[str, float], key: str) -> str:
    """A table cell; a rate with a ``_ci_low``/``_ci_high`` pair shows its interval in brackets."""
    if key not in metrics:
        return MISSING
    low, high = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
    interval = f" [{fmt_number(low)}, {fmt_number(high)}]" if low is not None and high is not None else ""
    return fmt_number(metrics[key]) + interval


def sweep_command(multirun_dir: Path) -> str | None:
    """The command-line overrides of the sweep, from Hydra's multirun.yaml (None if unavailable)."""
    try:
        config = yaml.safe_load((multirun_dir / "multirun.yaml").read_text(encoding="utf-8"))
        task = config["hydra"]["overrides"]["task"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return "python -m srl.run -m " + " ".join(str(t) for t in task)


def render_markdown(root: Path, jobs: list[Job], common: list[str], swept: list[str], columns: list[str], plots: list[Path]) -> str:
    failed = sum(j.status != "ok" for j in jobs)
    command = sweep_command(root)
    lines = [f"# Multirun comparison: {root}", ""]
    lines += [f"Command: `{command}`", ""] if command else []
    lines += [f"Common to all jobs: {' '.join(f'`{o}`' for o in common) or 'none'}", ""]
    lines += [f"Swept: {', '.join(f'`{k}`' for k in swept) or 'nothing'}; jobs: {len(jobs)}, failed: {failed}.", ""]
    header = ["job", *swept, "status", *columns]
    cells = [[j.num, *(j.swept[k].replace("|", r"\|") for k in swept), j.status, *(cell(j.metrics, c) for c in columns)] for j in jobs]
    text = "\n".join(lines) + "\n" + markdown_table(header, cells)
    if plots:
        text += "\n" + "".join(f"![{p.stem}]({p.name})\n" for p in plots)
    return text


def render_csv(jobs: list[Job], swept: list[str]) -> str:
    keys = sorted({k for j in jobs for k in j.metrics}, key=natural_key)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["job", "label", *swept, "status", *keys])
    for j in jobs:
        writer.writerow([j.num, j.label, *(j.swept[k] for k in swept), j.status, *(repr(j.metrics[k]) if k in j.metrics else "" for k in keys)])
    return buffer.getvalue()


def compare(multirun_dir: str | Path, out_dir: str | Path | None = None, metrics: Sequence[str] | None = None) -> CompareResult:
    """Read the jobs of ``multirun_dir`` and write compare.md/.csv/.json and the plots to ``out_dir``."""
    root = Path(multirun_dir)
    jobs = load_jobs(root)
    common, swept = label_jobs(jobs)
    columns = select_columns(jobs, metrics) if metrics else default_columns(jobs)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    # Failed jobs too: the steps a crashed stage finished are in its train_steps.csv.
    plots = write_plots([(j.label, j.metrics) for j in jobs if j.metrics], out, [(j.label, j.path) for j in jobs])
    atomic_write_text(out / "compare.md", render_markdown(root, jobs, common, swept, columns, plots))
    atomic_write_text(out / "compare.csv", render_csv(jobs, swept))
    record = {
        "multirun_dir": str(root), "command": sweep_command(root), "common": common, "swept": swept, "columns": columns,
        "jobs": [{"job": j.num, "label": j.label, "overrides": j.overrides, "swept": j.swept, "status": j.status, "metrics": j.metrics} for j in jobs],
    }
    atomic_write_text(out / "compare.json", json.dumps(record, indent=2) + "\n")
    written = [out / "compare.md", out / "compare.csv", out / "compare.json", *plots]
    return CompareResult(rows=jobs, columns=columns, common=common, swept=swept, written=written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srl.compare", description="Compare the jobs of a Hydra multirun (python -m srl.run -m ...).")
    parser.add_argument("multirun_dir", type=Path, help="the sweep dir: one <job num>/ subdirectory per job")
    parser.add_argument("--out", type=Path, default=None, help="where to write compare.md/.csv/.json and PNGs (default: the multirun dir)")
    parser.add_argument("--metrics", nargs="+", default=None, metavar="KEY", help="table columns instead of the default: exact names or globs, e.g. 'iter*/pairs/kept' 'm*/dpo/loss_*'")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = compare(args.multirun_dir, args.out, args.metrics)
    except CompareError as err:
        print(f"srl.compare: error: {err}", file=sys.stderr)
        return 2
    print(result.written[0].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in result.written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
