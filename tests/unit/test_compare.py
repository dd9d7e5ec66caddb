"""srl.compare on a hand-written multirun: 3 jobs sweeping N (num_candidates) and one failed job,
and the per-step training plot from hand-written train_steps.csv files."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from srl.compare import compare, fmt_number, main
from srl.evaluation import plots as compare_plots
from srl.training.steps import write_steps

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
        "m2/dpo/loss_mean": loss,
        "m2/dpo/loss_first": 0.6931,
        "m2/dpo/loss_last": loss,
        "m2/dpo/rewards/accuracy_mean": 0.5,
        "m2/dpo/pairs": kept,
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
    "2": (8, {**job_summary(8, 1.25, 40, 2.5, 0.6, [0.4, 0.5, 0.65], 0.7), "iter2/pairs/kept": 33, "m3/dpo/loss_mean": 0.5,
              "eval/m3/rm/pairwise_acc": 0.7, "eval/m3/h2h/win_rate": 0.75, "eval/m3/h2h/len_words_model": 120}),
    "10": (16, None),  # failed: overrides written by Hydra, no summary.json (10 sorts after 2)
}
LABELS = ["num_candidates=2", "num_candidates=4", "num_candidates=8"]


def dpo_steps(losses: list[float], accuracy: float = 0.5) -> list[dict[str, float]]:
    """train_steps.csv rows of a DPO stage, one per optimizer step (srl/training/steps.py)."""
    return [{"step": float(s), "epoch": 0.0, "loss": loss, "rewards/accuracy": accuracy, "rewards/margin": 0.1, "pairs": 16.0, "lr": 1e-6}
            for s, loss in enumerate(losses, start=1)]


def make_multirun(root: Path) -> Path:
    for num, (n, summary) in SUMMARIES.items():
        (root / num / ".hydra").mkdir(parents=True)
        (root / num / ".hydra" / "overrides.yaml").write_text(f"- +experiment=smoke\n- {N_KEY}={n}\n")
        if summary is not None:
            (root / num / "summary.json").write_text(json.dumps(summary))
            (root / num / "m2").mkdir()
            write_steps(root / num / "m2" / "train_steps.csv", dpo_steps([0.6931, summary["m2/dpo/loss_mean"]]))
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
        "iter1/judge/parse_fail_rate", "iter1/pairs/kept", "iter1/pairs/mean_margin", "m2/dpo/loss_mean",
        "iter2/pairs/kept", "m3/dpo/loss_mean",           # only columns some job has: no iter2 judge/margin
        "eval/m1/rm/pairwise_acc", "eval/m1/rm/parse_fail_rate", "eval/m1/h2h/win_rate", "eval/m1/h2h/len_words_model",
        "eval/m3/rm/pairwise_acc", "eval/m3/h2h/win_rate", "eval/m3/h2h/len_words_model",
        "time/total_s",
    ]
    _, rows = parse_markdown_table((root / "compare.md").read_text())
    assert [r["iter1/pairs/kept"] for r in rows] == ["10", "24", "40", "-"]
    assert [r["m2/dpo/loss_mean"] for r in rows] == ["0.693", "0.65", "0.6", "-"]
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
            assert row["status"] == "failed: no summary.json" and row["m2/dpo/loss_mean"] == ""
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
    fig = compare_plots.by_iteration(runs)
    labelled(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == LABELS
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["M1", "M2", "M3"]
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


def test_no_plot_without_data(tmp_path):
    runs = [("a", {"m1/sft/val_loss": 1.0})]
    assert all(plot(runs) is None for plot in compare_plots.PLOTS.values())
    (tmp_path / "m1").mkdir()  # a stage folder without train_steps.csv
    assert all(plot([("a", tmp_path)]) is None for plot in compare_plots.STEP_PLOTS.values())
    assert compare_plots.write_plots(runs, tmp_path, [("a", tmp_path)]) == []


@pytest.mark.parametrize("make", [lambda p: p / "missing", lambda p: p], ids=["missing", "no_jobs"])
def test_cli_without_jobs_exits_2_with_a_message(tmp_path, capsys, make):
    (tmp_path / "not_a_job").mkdir()
    path = make(tmp_path)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "overrides.yaml" in err and "Traceback" not in err


def test_a_single_run_dir_is_one_row(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "ok", "iter1/pairs/kept": 5, "m2/dpo/loss_mean": 0.6}))
    (tmp_path / "not_a_job").mkdir()
    assert main([str(tmp_path)]) == 0
    _, rows = parse_markdown_table((tmp_path / "compare.md").read_text())
    assert len(rows) == 1 and rows[0]["iter1/pairs/kept"] == "5" and rows[0]["m2/dpo/loss_mean"] == "0.6"


def test_old_summary_key_shows_a_dash(tmp_path):
    """A summary written before stage statistics (plain m2/dpo/loss) still compares: '-' for the mean."""
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"iter1/pairs/kept": 5, "m2/dpo/loss": 0.7}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "summary.json").write_text(json.dumps({"iter1/pairs/kept": 6, "m2/dpo/loss_mean": 0.6}))
    res = compare(tmp_path)
    _, rows = parse_markdown_table(res.written[0].read_text())
    assert [r["m2/dpo/loss_mean"] for r in rows] == ["-", "0.6"]


def axis(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_training_plots_per_step_csvs_one_line_per_job(tmp_path):
    losses = {"a": [0.6931, 0.69, 0.68], "b": [0.6931, 0.65]}
    for name, values in losses.items():
        (tmp_path / name / "m2").mkdir(parents=True)
        write_steps(tmp_path / name / "m2" / "train_steps.csv", dpo_steps(values, accuracy=0.25))
    (tmp_path / "c" / "m2").mkdir(parents=True)  # a job whose stage wrote no CSV: no line
    dirs = [("N=2", tmp_path / "a"), ("N=4", tmp_path / "b"), ("N=8", tmp_path / "c")]
    fig = compare_plots.training(dirs)
    labelled(fig)
    assert [ax.get_title() for ax in fig.axes] == ["DPO loss", "Chosen reward > rejected reward"]  # no SFT CSV: no SFT panel
    loss_ax = axis(fig, "DPO loss")
    assert [line.get_label() for line in loss_ax.lines] == ["N=2 · M2 DPO", "N=4 · M2 DPO"]
    for line, values in zip(loss_ax.lines, losses.values()):
        assert list(line.get_xdata()) == list(range(1, len(values) + 1))
        assert list(line.get_ydata()) == values
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["N=2 · M2 DPO", "N=4 · M2 DPO"]
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.yaxis.get_major_formatter().get_useOffset() is False
        assert ax.yaxis.get_offset_text().get_text() == ""
    # Constant accuracy: a flat line in a range around it, not a zoom into nothing.
    low, high = axis(fig, "Chosen reward > rejected reward").get_ylim()
    assert low < 0.25 - 0.01 and high > 0.25 + 0.01
    compare_plots.plt.close(fig)
    assert compare_plots.training(dirs[2:]) is None
    assert compare_plots.training([]) is None


def test_training_flat_loss_with_float_noise_is_drawn_flat(tmp_path):
    """1e-7 noise around 0.6931 (a DPO loss that does not move) must not fill the panel."""
    (tmp_path / "m2").mkdir()
    write_steps(tmp_path / "m2" / "train_steps.csv", dpo_steps([0.6931472, 0.6931471, 0.6931473]))
    fig = compare_plots.training([("job 0", tmp_path)])
    low, high = axis(fig, "DPO loss").get_ylim()
    assert high - low >= 0.05 and low < 0.6931 < high
    fig.canvas.draw()
    assert axis(fig, "DPO loss").yaxis.get_offset_text().get_text() == ""
    compare_plots.plt.close(fig)


def test_training_sft_stage_gets_its_own_panel(tmp_path):
    (tmp_path / "m1").mkdir()
    write_steps(tmp_path / "m1" / "train_steps.csv", [{"step": 1.0, "epoch": 0.0, "loss": 2.0, "target_tokens": 100.0, "lr": 1e-5},
                                                      {"step": 2.0, "epoch": 0.0, "loss": 1.5, "target_tokens": 90.0, "lr": 1e-5}])
    (tmp_path / "m2").mkdir()
    write_steps(tmp_path / "m2" / "train_steps.csv", dpo_steps([0.69, 0.6]))
    (tmp_path / "m3").mkdir()
    write_steps(tmp_path / "m3" / "train_steps.csv", dpo_steps([0.69, 0.5, 0.4]))
    fig = compare_plots.training([("job 0", tmp_path)])
    assert [ax.get_title() for ax in fig.axes] == ["DPO loss", "Chosen reward > rejected reward", "SFT loss"]
    assert [line.get_label() for line in axis(fig, "DPO loss").lines] == ["job 0 · M2 DPO", "job 0 · M3 DPO"]
    (sft,) = axis(fig, "SFT loss").lines
    assert sft.get_label() == "job 0 · M1 SFT" and list(sft.get_ydata()) == [2.0, 1.5]
    compare_plots.plt.close(fig)
