"""The evaluation tables: a row per model (markdown file, summary and W&B).

- **judge** (``eval/table``): the model as a judge of held-out human-ranked replies, each metric with
  its 95% bootstrap interval over prompts, next to the same metric for "the longer reply wins" on
  the same pairs, the pair count and whether the judge's interval lies above the baseline.
- **models** (``eval/models_table``): judge-free measures (implicit-reward accuracy against the
  reference, held-out NLL of the human best reply, reply length) and the head-to-head, with its
  protocol, judge and intervals.
- one **judge** table per preference set (``eval/pref/<name>/table``), with the implicit-reward
  accuracy on that set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from srl.data.records import atomic_write_text

Column = tuple[str, str, str]  # (metric, column title, format)

JUDGE_COLUMNS: tuple[Column, ...] = (
    ("rm/pairs", "pairs", "{}"),
    ("rm/pairwise_acc", "pairwise acc", "{:.3f}"),
    ("rm/length_pairwise_acc", "longer wins", "{:.3f}"),
    ("rm/vs_length", "vs longer", "{}"),
    ("rm/spearman", "Spearman", "{:.3f}"),
    ("rm/length_spearman", "longer: Spearman", "{:.3f}"),
    ("rm/kendall_tau", "Kendall tau", "{:.3f}"),
    ("rm/length_kendall_tau", "longer: Kendall", "{:.3f}"),
    ("rm/tie_rate", "score ties", "{:.3f}"),
    ("rm/five_best_pct", "5-best %", "{:.1f}"),
    ("rm/exact_match_pct", "exact match %", "{:.1f}"),
    ("rm/parse_fail_rate", "judge parse fail", "{:.3f}"),
)

MODEL_COLUMNS: tuple[Column, ...] = (
    ("implicit/reference", "implicit vs", "{}"),
    ("implicit/pairs", "implicit pairs", "{}"),
    ("implicit/accuracy", "implicit acc", "{:.3f}"),
    ("implicit/length_accuracy", "longer wins", "{:.3f}"),
    ("implicit/tie_rate", "implicit ties", "{:.3f}"),
    ("heldout/best_reply_nll", "held-out NLL", "{:.4f}"),
    ("replies/tokens_mean", "reply tokens", "{:.1f}"),
    ("h2h/baseline", "h2h vs", "{}"),
    ("h2h/protocol", "protocol", "{}"),
    ("h2h/judge", "judge", "{}"),
    ("h2h/prompts_scored", "scored", "{}"),
    ("h2h/win_rate", "win", "{:.2f}"),
    ("h2h/tie_rate", "tie", "{:.2f}"),
    ("h2h/loss_rate", "loss", "{:.2f}"),
    ("h2h/len_words_model", "words (model)", "{:.0f}"),
    ("h2h/len_words_baseline", "words (baseline)", "{:.0f}"),
)

JUDGE_INTRO = (
    "The model as a judge of human-ranked replies on held-out prompts: pairwise accuracy counts score "
    "ties as wrong; [low, high] is a 95% bootstrap interval over prompts; 'longer wins' is the trivial "
    "judge that prefers the longer reply (words), on the same pairs; 'vs longer' says whether the "
    "judge's interval lies above or below it, or contains it (within)."
)
MODEL_INTRO = (
    "Judge-free: implicit acc = share of held-out human pairs where log pi(better)/pi_ref(better) > "
    "log pi(worse)/pi_ref(worse) (a margin within the tie tolerance is a tie, not a win), beside 'longer "
    "wins' on the same pairs (summed log-probs grow with length); held-out NLL "
    "of the human best reply (nats/token); mean reply length (tokens). h2h: win/tie/loss of the row's "
    "model against the baseline over scored prompts, 95% bootstrap interval over prompts; pairwise "
    "protocol: two orders that disagree count as a tie; pointwise: the higher rubric score wins."
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = fmt.format(value)
    low, high = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    return f"{text} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else text


def eval_table(rows: Sequence[tuple[str, dict[str, Any]]], columns: Sequence[Column] = JUDGE_COLUMNS, prefix: str = "") -> tuple[list[str], list[list[str]]]:
    """(column titles, one row of cells per (model name, metrics)); metric keys are read under ``prefix``."""
    titles = ["model"] + [title for _, title, _ in columns]
    return titles, [[name] + [_cell(m, prefix + key, fmt) for key, _, fmt in columns] for name, m in rows]


def markdown_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def preference_set_names(rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    names = {k.split("/")[1] for _, m in rows for k in m if k.startswith("pref/") and k.count("/") >= 3}
    return sorted(names)


def write_table(path: Path, title: str, rows: Sequence[tuple[str, dict[str, Any]]], note: str = "") -> list[tuple[str, list[str], list[list[str]]]]:
    """Write the tables as markdown to ``path``; returns (summary key, titles, cells) of each."""
    tables = [("eval/table", "Judge quality (held-out oasst1)", JUDGE_INTRO, JUDGE_COLUMNS, ""),
              ("eval/models_table", "Models", MODEL_INTRO, MODEL_COLUMNS, "")]
    implicit = tuple(c for c in MODEL_COLUMNS if c[0].startswith("implicit/"))
    for name in preference_set_names(rows):
        tables.append((f"eval/pref/{name}/table", f"Preference set {name}", "", JUDGE_COLUMNS + implicit, f"pref/{name}/"))
    out, text = [], f"# {title}\n\n{note}\n"
    for key, heading, intro, columns, prefix in tables:
        titles, cells = eval_table(rows, columns, prefix)
        out.append((key, titles, cells))
        text += f"\n## {heading}\n\n" + (f"{intro}\n\n" if intro else "") + markdown_table(titles, cells)
    atomic_write_text(path, text)
    return out
