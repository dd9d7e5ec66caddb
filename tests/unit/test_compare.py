"""srl.compare on a hand-written multirun: 3 jobs sweeping N (num_candidates) and one failed job."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from srl import compare_plots
from srl.compare import compare, fmt_number, main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_KEY = "generation.num_candidates"


def job_summary(n: int, val_loss: float, kept: int, margin: float, loss: float, acc: list[float], win: float) -> dict:
    """A summary.json of a 2-model run (M1 -> M2) with eval of M0..M2, plus non-numeric entries."""
    return {
        "data/ift_train": 100,
        "m1/sft/val_loss": val_loss,
        "iter1/judge/parse_fail_rate": 0.25,
        "iter1/pairs/kept": kept,
        "iter1/pairs/mean_margin": margin,
        "m2/dpo/loss": loss,
        "m2/dpo/rewards/accuracy": 0.5,
        **{f"eval/m{m}/rm/pairwise_acc": a for m, a in enumerate(acc)},
        **{f"eval/m{m}/rm/parse_fail_rate": 0.1 for m in range(3)},
        "eval/m1/h2h/win_rate": 0.5,
        "eval/m2/h2h/win_rate": win,
        "eval/m2/h2h/win_rate_ci_low": 0.45,
        "eval/m2/h2h/win_rate_ci_high": 0.75,
        "eval/m1/h2h/len_words_model": 80,
        "eval/m2/h2h/len_words_model": 90 + n,
        "eval/m2/h2h/baseline": "m1",          # string: not a metric
        "eval/table": [{"model": "m1"}],        # table: not a metric
        "time/data_s": 1.5,
        "time/m1_s": 10.0,
        "time/iter1/pairs_s": 2.0,
    }


SUMMARIES = {
    "0": (2, job_summary(2, 1.25, 10, 1.5, 0.6931, [0.4, 0.5, 0.55], 0.6)),
    "1": (4, job_summary(4, 1.25, 24, 2.0, 0.65, [0.4, 0.5, 0.6], 0.625)),
    # N=8 ran a second iteration (M3): its columns appear, '-' for the other jobs.
    "2": (8, {**job_summary(8, 1.25, 40, 2.5, 0.6, [0.4, 0.5, 0.65], 0.7), "iter2/pairs/kept": 33, "m3/dpo/loss": 0.5,
              "eval/m3/rm/pairwise_acc": 0.7, "eval/m3/h2h/win_rate": 0.75, "eval/m3/h2h/len_words_model": 120}),
    "10": (16, None),  # failed: overrides written by Hydra, no summary.json (10 sorts after 2)
}
LABELS = ["num_candidates=2", "num_candidates=4", "num_candidates=8"]


def make_multirun(root: Path) -> Path:
    for num, (n, summary) in SUMMARIES.items():
        (root / num / ".hydra").mkdir(parents=True)
        (root / num / ".hydra" / "overrides.yaml").write_text(f"- +experiment=smoke\n- {N_KEY}={n}\n")
        if summary is not None:
            (root / num / "summary.json").write_text(json.dumps(summary))
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - +experiment=smoke\n    - generation.num_candidates=2,4,8,16\n"
    )
    return root


def parse_markdown_table(text: str) -> tuple[str, list[dict[str, str]]]:
    """(text before the table, rows as header -> cell); the separator line is skipped."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = [line for line in lines[start:] if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    return "\n".join(lines[:start]), [dict(zip(split[0], row)) for row in split[2:]]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = make_multirun(tmp_path_factory.mktemp("multirun"))
    return root, compare(root)


def test_one_row_per_job_with_swept_column_and_status(result):
    root, res = result
    header, rows = parse_markdown_table((root / "compare.md").read_text())
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]
    assert [r[N_KEY] for r in rows] == ["2", "4", "8", "16"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed: no summary.json"]
    # The shared override is in the header, not a column; the sweep command comes from multirun.yaml.
    assert "`+experiment=smoke`" in header and "generation.num_candidates=2,4,8,16" in header
    assert not any("experiment" in column for column in rows[0])
    assert res.common == ["+experiment=smoke"] and res.swept == [N_KEY]
    assert [j.label for j in res.rows[:3]] == LABELS


def test_failed_job_is_logged_and_all_dashes(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="srl.compare"):
        res = compare(make_multirun(tmp_path))
    assert any("job 10" in r.getMessage() and "summary.json" in r.getMessage() for r in caplog.records)
    _, rows = parse_markdown_table(res.written[0].read_text())
    assert all(rows[3][c] == "-" for c in res.columns)


def test_default_columns_and_values(result):
    root, res = result
    assert res.columns == [
        "m1/sft/val_loss",
        "iter1/judge/parse_fail_rate", "iter1/pairs/kept", "iter1/pairs/mean_margin", "m2/dpo/loss",
        "iter2/pairs/kept", "m3/dpo/loss",           # only columns some job has: no iter2 judge/margin
        "eval/m1/rm/pairwise_acc", "eval/m1/rm/parse_fail_rate", "eval/m1/h2h/win_rate", "eval/m1/h2h/len_words_model",
        "eval/m3/rm/pairwise_acc", "eval/m3/h2h/win_rate", "eval/m3/h2h/len_words_model",
        "time/total_s",
    ]
    _, rows = parse_markdown_table((root / "compare.md").read_text())
    assert [r["iter1/pairs/kept"] for r in rows] == ["10", "24", "40", "-"]
    assert [r["m2/dpo/loss"] for r in rows] == ["0.693", "0.65", "0.6", "-"]
    assert [r["iter2/pairs/kept"] for r in rows] == ["-", "-", "33", "-"]
    assert rows[0]["time/total_s"] == "13.5"  # 1.5 + 10.0 + 2.0 seconds
    assert rows[2]["eval/m3/h2h/win_rate"] == "0.75"
    assert "eval/m2/h2h/win_rate" not in rows[0]  # M1 and M_T only; M2 is in the plots and CSV


def test_rate_with_interval_shows_brackets(tmp_path):
    res = compare(make_multirun(tmp_path), metrics=["eval/m2/h2h/win_rate"])
    _, rows = parse_markdown_table(res.written[0].read_text())
    assert rows[0]["eval/m2/h2h/win_rate"] == "0.6 [0.45, 0.75]"


def test_number_format():
    assert [fmt_number(v) for v in (10, 0.69314, 12.345, 0.000123456, 2.0, 1234.6)] == ["10", "0.693", "12.3", "0.000123", "2", "1235"]


def test_csv_round_trips_numbers(result):
    root, _ = result
    with (root / "compare.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"] and rows[1]["label"] == LABELS[1]
    for row, (n, summary) in zip(rows, SUMMARIES.values()):
        assert row[N_KEY] == str(n)
        if summary is None:
            assert row["status"] == "failed: no summary.json" and row["m2/dpo/loss"] == ""
            continue
        numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))}
        assert {k: float(row[k]) for k in numbers} == numbers
        assert float(row["time/total_s"]) == 13.5
    assert "eval/table" not in rows[0] and "eval/m2/h2h/baseline" not in rows[0]
    assert rows[0]["iter2/pairs/kept"] == "" and rows[2]["iter2/pairs/kept"] == "33"


def test_json_lists_every_job(result):
    root, _ = result
    record = json.loads((root / "compare.json").read_text())
    assert [(j["job"], j["status"]) for j in record["jobs"]] == [("0", "ok"), ("1", "ok"), ("2", "ok"), ("10", "failed: no summary.json")]
    assert record["jobs"][2]["metrics"]["iter2/pairs/kept"] == 33 and record["common"] == ["+experiment=smoke"]


def test_metrics_globs_replace_the_default(tmp_path):
    root = make_multirun(tmp_path / "runs")
    assert main([str(root), "--out", str(tmp_path / "out"), "--metrics", "iter*/pairs/kept", "m1/sft/val_loss", "no/such/*"]) == 0
    _, rows = parse_markdown_table((tmp_path / "out" / "compare.md").read_text())
    assert list(rows[0]) == ["job", N_KEY, "status", "iter1/pairs/kept", "iter2/pairs/kept", "m1/sft/val_loss"]
    assert [r["m1/sft/val_loss"] for r in rows] == ["1.25", "1.25", "1.25", "-"]
    assert not (root / "compare.md").exists()  # --out, not the multirun dir


def test_pngs_written_and_valid(result):
    root, res = result
    for name in ("judge_quality.png", "by_iteration.png", "pairs.png", "training.png"):
        assert (root / name) in res.written
        assert (root / name).read_bytes()[:8] == PNG_MAGIC


def runs_of(res) -> list[tuple[str, dict[str, float]]]:
    return [(j.label, j.metrics) for j in res.rows if j.metrics]


def labelled(fig) -> None:
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_line_plots_have_a_legend_of_job_labels(result):
    runs = runs_of(result[1])
    for plot, models in ((compare_plots.by_iteration, ["M1", "M2", "M3"]), (compare_plots.training, ["M2", "M3"])):
        fig = plot(runs)
        labelled(fig)
        assert [t.get_text() for t in fig.legends[0].get_texts()] == LABELS
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == models
        compare_plots.plt.close(fig)


def test_bar_plots_have_jobs_on_x_and_a_legend_of_groups(result):
    runs = runs_of(result[1])
    for plot, groups in ((compare_plots.judge_quality, ["M0", "M1", "M2", "M3"]), (compare_plots.pairs, ["iteration 1", "iteration 2"])):
        fig = plot(runs)
        labelled(fig)
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == LABELS
        assert [t.get_text() for t in fig.legends[0].get_texts()] == groups
        compare_plots.plt.close(fig)
    # pairs: bar heights are the pairs kept (iteration 1 bars first), NaN where a job lacks iteration 2.
    fig = compare_plots.pairs(runs)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:3] == [10, 24, 40] and heights[5] == 33
    compare_plots.plt.close(fig)


def test_no_plot_without_data():
    runs = [("a", {"m1/sft/val_loss": 1.0})]
    assert all(plot(runs) is None for plot in compare_plots.PLOTS.values())


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p])
def test_cli_without_jobs_exits_2_with_a_message(tmp_path, capsys, make):
    (tmp_path / "not_a_job").mkdir()
    path = make(tmp_path)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "overrides.yaml" in err and "Traceback" not in err
