"""Metrics and the evaluation table reach summary.json and a real (offline) W&B run."""

from __future__ import annotations

import json

from srl.pipeline.tracking import Tracker


def test_tracker_sends_metrics_and_table_to_offline_wandb(tmp_path, monkeypatch):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="srl-test", save_dir=str(tmp_path), mode="offline")
    tracker = Tracker(tmp_path, logger)
    try:
        tracker.log({"eval/m1/rm/pairwise_acc": 0.625, "eval/m1/h2h/baseline": "M0"})
        tracker.log_table("eval/table", ["model", "pairwise acc"], [["M0", "0.500"], ["M1", "0.625"]])
        tracker.write_summary()
    finally:
        wandb.finish()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval/m1/rm/pairwise_acc"] == 0.625 and summary["eval/m1/h2h/baseline"] == "M0"
    assert summary["eval/table"] == [{"model": "M0", "pairwise acc": "0.500"}, {"model": "M1", "pairwise acc": "0.625"}]
    # The offline run holds the metric (in its record log) and the table as a W&B table file.
    run_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1 and b"eval/m1/rm/pairwise_acc" in run_files[0].read_bytes()
    tables = list((tmp_path / "wandb").glob("offline-run-*/files/media/table/eval/table_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["model", "pairwise acc"] and table["data"] == [["M0", "0.500"], ["M1", "0.625"]]
