"""Plots of a multirun comparison (srl/compare.py): one PNG per question, from each job's metrics.

The summary plots take ``runs``, a list of (job label, numeric metrics of that job's summary.json);
``training`` takes ``dirs``, a list of (job label, job's run dir), and plots the per-step rows of
each training stage (``<run dir>/m{t}/train_steps.csv``, written by srl/training/steps.py). Each returns a
``matplotlib.figure.Figure``, or None when no job has what it plots (then no file is written).
``write_plots`` saves the figures and closes them. Model M_t's metrics are named ``eval/m{t}/...``
and ``m{t}/dpo/...``; iteration t's ``iter{t}/...`` (DESIGN.md rule 7).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger("srl.compare")


matplotlib.use("Agg")  # files only, never a display: must come before pyplot is imported


Runs = Sequence[tuple[str, dict[str, float]]]


Dirs = Sequence[tuple[str, Path]]


# srl.training.steps.STEPS_FILE; read here with csv, not srl.training.steps, which would load torch and lightning.
STEPS_FILE = "train_steps.csv"


FLAT_SPAN = 1e-6  # a panel whose values span less than this is drawn as a flat line


def indices(runs: Runs, template: str) -> list[int]:
    """The sorted values of ``{t}`` for which some job has the metric ``template.format(t=...)``."""
    pattern = re.compile(re.escape(template).replace(re.escape("{t}"), r"(\d+)") + "$")
    return sorted({int(m.group(1)) for _, metrics in runs for key in metrics if (m := pattern.match(key))})


def _value(metrics: dict[str, float], key: str) -> float:
    return float(metrics.get(key, math.nan))


def _grouped_bars(ax: Axes, runs: Runs, groups: dict[str, str]) -> None:
    """One group of bars per job (x), one bar per ``groups`` entry (name -> metric key)."""
    width = 0.8 / len(groups)
    for k, (name, key) in enumerate(groups.items()):
        offset = (k - (len(groups) - 1) / 2) * width
        ax.bar([x + offset for x in range(len(runs))], [_value(m, key) for _, m in runs], width, label=name)
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([label for label, _ in runs], rotation=20, ha="right")
    ax.set_xlabel("job")


def _lines(ax: Axes, runs: Runs, models: list[int], template: str) -> int:
    """One line per job over the models it has a value for (x: model index); returns the line count."""
    drawn = 0
    for label, metrics in runs:
        xs = [t for t in models if template.format(t=t) in metrics]
        if xs:
            ax.plot(xs, [metrics[template.format(t=t)] for t in xs], marker="o", label=label)
            drawn += 1
    ax.set_xticks(models)
    ax.set_xticklabels([f"M{t}" for t in models])
    ax.set_xlabel("model")
    return drawn


def _legend(fig: Figure, ax: Axes, title: str) -> None:
    """A figure legend right of the panels (never over the data), with the series of ``ax``."""
    fig.legend(*ax.get_legend_handles_labels(), title=title, loc="outside right upper")


def _with_data(runs: Runs, keys: Sequence[str]) -> list[tuple[str, dict[str, float]]]:
    return [(label, m) for label, m in runs if any(k in m for k in keys)]


def judge_quality(runs: Runs) -> Figure | None:
    """Judge agreement with human rankings (pairwise accuracy) and its parse-failure rate, per
    job (x) and model (bars): does the sweep make the model a better judge of itself?"""
    models = sorted(set(indices(runs, "eval/m{t}/rm/pairwise_acc")) | set(indices(runs, "eval/m{t}/rm/parse_fail_rate")))
    panels = (("rm/pairwise_acc", "pairwise accuracy", "Agreement with human ranks"),
              ("rm/parse_fail_rate", "parse-failure rate", "Judge replies without a score"))
    runs = _with_data(runs, [f"eval/m{t}/{metric}" for t in models for metric, _, _ in panels])
    if not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.4 * len(runs)), 4.5), layout="constrained")
    for ax, (metric, ylabel, title) in zip(axes, panels):
        _grouped_bars(ax, runs, {f"M{t}": f"eval/m{t}/{metric}" for t in models})
        ax.set(ylabel=ylabel, title=title)
    if len(models) > 1:
        _legend(fig, axes[0], "model")
    fig.suptitle("Judge quality per job (held-out human rankings)")
    return fig


def by_iteration(runs: Runs) -> Figure | None:
    """Head-to-head win rate and reply length (words) of each model M_t, one line per job: does
    self-rewarding improve replies, or only lengthen them?"""
    panels = (("eval/m{t}/h2h/win_rate", "win rate", "Head-to-head win rate vs the baseline"),
              ("eval/m{t}/h2h/len_words_model", "reply length (words)", "Reply length"))
    return _line_panels(runs, panels, "Instruction following by model")


def pairs(runs: Runs) -> Figure | None:
    """DPO pairs kept per iteration (bars) by job (x): how many preference pairs each setting yields."""
    iterations = indices(runs, "iter{t}/pairs/kept")
    runs = _with_data(runs, [f"iter{t}/pairs/kept" for t in iterations])
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(runs)), 4.5), layout="constrained")
    _grouped_bars(ax, runs, {f"iteration {t}": f"iter{t}/pairs/kept" for t in iterations})
    ax.set(ylabel="pairs kept", title="Preference pairs kept (score ties dropped)")
    if len(iterations) > 1:
        _legend(fig, ax, "iteration")
    return fig


def _line_panels(runs: Runs, panels: Sequence[tuple[str, str, str]], title: str) -> Figure | None:
    """Two panels of (metric template over model index t, y label, title), a line per job."""
    models = sorted({t for template, _, _ in panels for t in indices(runs, template)})
    if not models:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="constrained")
    drawn = [_lines(ax, runs, models, template) for ax, (template, _, _) in zip(axes, panels)]
    for ax, (_, ylabel, panel_title) in zip(axes, panels):
        ax.set(ylabel=ylabel, title=panel_title)
    if max(drawn) > 1:
        _legend(fig, axes[drawn.index(max(drawn))], "job")
    fig.suptitle(title)
    return fig


def read_steps(path: Path) -> list[dict[str, float]]:
    """The rows of a train_steps.csv (srl.training.steps.write_steps): column -> value, empty cells left out."""
    with path.open(encoding="utf-8", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


def stage_steps(run_dir: Path) -> list[tuple[int, str, list[dict[str, float]]]]:
    """(t, kind, rows) for each training stage folder ``m{t}`` of a run dir holding train_steps.csv,
    ordered by t; kind is "DPO" when the rows hold reward statistics, else "SFT"."""
    stages = []
    for folder in Path(run_dir).glob("m*"):
        match = re.fullmatch(r"m(\d+)", folder.name)
        if not match or not (folder / STEPS_FILE).is_file():
            continue
        try:
            rows = read_steps(folder / STEPS_FILE)
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:  # one bad file must not stop the comparison
            log.warning("%s: not plotted, not a readable table of numbers (%s)", folder / STEPS_FILE, err)
            continue
        if rows:
            kind = "DPO" if any(k.startswith("rewards/") for r in rows for k in r) else "SFT"
            stages.append((int(match.group(1)), kind, rows))
    return sorted(stages, key=lambda stage: stage[0])


def _plain_y(ax: Axes, values: Sequence[float]) -> None:
    """Y ticks as plain numbers (no offset such as "+6.931e-1", which draws 1e-7 noise as a curve);
    a flat series gets a range of +-5% around it (at least +-0.05) so it looks flat."""
    ax.ticklabel_format(useOffset=False, style="plain", axis="y")
    finite = [v for v in values if math.isfinite(v)]
    if finite and max(finite) - min(finite) < FLAT_SPAN:
        mid = (max(finite) + min(finite)) / 2
        pad = 0.05 * max(abs(mid), 1.0)
        ax.set_ylim(mid - pad, mid + pad)


def training(dirs: Dirs) -> Figure | None:
    """Per-step training curves, one line per job and stage (x: optimizer step; y: the step's mean
    over its effective batch): DPO loss and reward accuracy (chosen reward > rejected) of each
    M_t (t >= 2), and M1's SFT loss. Panels without data are left out."""
    panels = (("DPO", "loss", "DPO loss", "DPO loss"),
              ("DPO", "rewards/accuracy", "reward accuracy", "Chosen reward > rejected reward"),
              ("SFT", "loss", "SFT loss", "SFT loss"))
    stages = [(f"{label} · M{t} {kind}", kind, rows) for label, path in dirs for t, kind, rows in stage_steps(path)]
    color = {name: f"C{i % 10}" for i, (name, _, _) in enumerate(stages)}  # one colour per series, in every panel
    drawn = []
    for kind, stat, ylabel, title in panels:
        lines = [(name, [r["step"] for r in have], [r[stat] for r in have])
                 for name, stage_kind, rows in stages if stage_kind == kind
                 if (have := [r for r in rows if stat in r and "step" in r])]
        if lines:
            drawn.append((lines, ylabel, title))
    if not drawn:
        return None
    fig, axes = plt.subplots(1, len(drawn), figsize=(5.0 * len(drawn) + 3.0, 4.5), layout="constrained", squeeze=False)
    for ax, (lines, ylabel, title) in zip(axes[0], drawn):
        for name, xs, ys in lines:
            ax.plot(xs, ys, color=color[name], marker="o" if len(xs) <= 20 else None, label=name)
        ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
        _plain_y(ax, [y for _, _, ys in lines for y in ys])
    handles = {}
    for ax in axes[0]:
        handles.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels()) if label not in handles})
    fig.legend(list(handles.values()), list(handles), title="job · stage", loc="outside right upper")
    fig.suptitle("Training per optimizer step")
    return fig


PLOTS: dict[str, Callable[[Runs], Figure | None]] = {
    "judge_quality.png": judge_quality,
    "by_iteration.png": by_iteration,
    "pairs.png": pairs,
}


STEP_PLOTS: dict[str, Callable[[Dirs], Figure | None]] = {"training.png": training}


def write_plots(runs: Runs, out_dir: Path, dirs: Dirs = ()) -> list[Path]:
    """Save every plot that has data into ``out_dir`` (temporary name, then rename); returns the paths.
    ``runs`` feed the summary plots (PLOTS), ``dirs`` the per-step ones (STEP_PLOTS)."""
    written = []
    plots = [(name, lambda plot=plot: plot(runs)) for name, plot in PLOTS.items()]
    plots += [(name, lambda plot=plot: plot(dirs)) for name, plot in STEP_PLOTS.items()]
    for name, draw in plots:
        fig = draw()
        if fig is None:
            continue
        path, tmp = out_dir / name, out_dir / (name + ".tmp")
        try:
            fig.savefig(tmp, format="png", dpi=100)
        finally:
            plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written
