"""The evaluation table: a row per model, judge-quality and head-to-head columns (markdown, W&B)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from srl.data.records import atomic_write_text

# (metric, column title, format) of the evaluation table; h2h rates show their 95% interval.
TABLE_COLUMNS = (
    ("rm/pairwise_acc", "pairwise acc", "{:.3f}"),
    ("rm/tie_rate", "score ties", "{:.3f}"),
    ("rm/five_best_pct", "5-best %", "{:.1f}"),
    ("rm/exact_match_pct", "exact match %", "{:.1f}"),
    ("rm/spearman", "Spearman", "{:.3f}"),
    ("rm/kendall_tau", "Kendall tau", "{:.3f}"),
    ("rm/parse_fail_rate", "judge parse fail", "{:.3f}"),
    ("h2h/baseline", "h2h vs", "{}"),
    ("h2h/win_rate", "win", "{:.2f}"),
    ("h2h/tie_rate", "tie", "{:.2f}"),
    ("h2h/loss_rate", "loss", "{:.2f}"),
    ("h2h/len_words_model", "words (model)", "{:.0f}"),
    ("h2h/len_words_baseline", "words (baseline)", "{:.0f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = fmt.format(value)
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{text} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else text


def eval_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    """(column titles, one row of cells per (model name, metrics ``rm/*``, ``h2h/*``))."""
    columns = ["model"] + [title for _, title, _ in TABLE_COLUMNS]
    return columns, [[name] + [_cell(m, key, fmt) for key, _, fmt in TABLE_COLUMNS] for name, m in rows]


def markdown_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def write_table(path: Path, title: str, rows: Sequence[tuple[str, dict[str, Any]]], note: str = "") -> tuple[list[str], list[list[str]]]:
    columns, cells = eval_table(rows)
    intro = (
        "rm: judge vs human ranks on held-out oasst1 prompts (pairwise acc counts score ties as wrong). "
        "h2h: win/tie/loss of the row's model against the baseline, 95% bootstrap interval over prompts; "
        "two orders that disagree count as a tie."
    )
    atomic_write_text(path, f"# {title}\n\n{intro}\n{note}\n" + markdown_table(columns, cells))
    return columns, cells
