"""The entry points end to end on the tiny model: smoke run, resume, data command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import ROOT, compose
from transformers import AutoModelForCausalLM

from srl.pipeline.loop import NoPairsError
from srl.pipeline.manifest import StageConfigMismatch
from srl.run import build_loop

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


def test_smoke_experiment_cli_runs_m1_to_m3(tmp_path):
    result = run_cli("srl.run", "+experiment=smoke", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["m1/sft/steps"] > 0
    assert summary["m1/sft/val_loss"] < summary["m1/sft/val_loss_before"]
    for name in ("ift_train.jsonl", "eft_train.jsonl", "ift_heldout.jsonl", "ranked_heldout.jsonl", "heldout_tree_ids.json"):
        assert (tmp_path / "data" / name).is_file()
    for t in (1, 2):
        for name in ("prompts.jsonl", "prompt_attempts.jsonl", "candidates.jsonl", "judgements.jsonl", "pairs.jsonl"):
            assert (tmp_path / f"iter{t}" / name).is_file(), (t, name)
        assert summary[f"iter{t}/pairs/kept"] >= 1
        assert 0.0 <= summary[f"iter{t}/judge/parse_fail_rate"] < 1.0
        assert summary[f"m{t + 1}/dpo/steps"] >= 1
    # every saved model has its card: what it is, this stage's statistics as the summary has them, the command
    for t, kind in ((1, "sft"), (2, "dpo"), (3, "dpo")):
        card = (tmp_path / f"m{t}" / "model" / "README.md").read_text()
        assert card.startswith("---\nbase_model: ") and f"# M{t} of an srl self-rewarding run" in card
        assert f"| m{t}/{kind}/loss_mean | {summary[f'm{t}/{kind}/loss_mean']:.4g} |" in card
        assert f"python -m srl.run +experiment=smoke hydra.run.dir={tmp_path}" in card
    assert f"- iter1/pairs/kept: {summary['iter1/pairs/kept']}" in (tmp_path / "m2" / "model" / "README.md").read_text()
    n_prompts = len((tmp_path / "iter1" / "prompts.jsonl").read_text().splitlines())
    assert len((tmp_path / "iter1" / "candidates.jsonl").read_text().splitlines()) == 4 * n_prompts
    for t in (1, 2, 3):
        assert AutoModelForCausalLM.from_pretrained(tmp_path / f"m{t}" / "model").config.num_hidden_layers == 2
    # M3 differs from M2: DPO moved the weights.
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m2" / "model").state_dict()
    m3 = AutoModelForCausalLM.from_pretrained(tmp_path / "m3" / "model").state_dict()
    assert any(not torch.equal(m2[k], m3[k]) for k in m2)
    assert "srl run finished" in result.stdout
    check_eval_table(tmp_path, summary, models=4)
    assert "| M3 |" in result.stdout


def check_eval_table(run_dir: Path, summary: dict, models: int) -> None:
    """The run ends with the evaluation tables: a row per model M0..M_T, every number recomputed from
    the run's files (judge metrics with the length baseline and intervals, implicit reward against
    M0, held-out NLL, reply length, the pointwise head-to-head judged by M1)."""
    from srl.data.records import Candidate, Judgement, RankedPrompt, read_jsonl
    from srl.evaluation.head_to_head import pointwise_metrics
    from srl.evaluation.implicit_reward import ReplyLogprob, best_reply_nll, by_key, implicit_reward_metrics
    from srl.evaluation.rm import rm_metrics
    from srl.judging.templates import load_judge_template

    table, models_table = summary["eval/table"], summary["eval/models_table"]
    assert [row["model"] for row in table] == [row["model"] for row in models_table] == [f"M{t}" for t in range(models)]
    markdown = (run_dir / "eval" / "table.md").read_text()
    assert all(f"| M{t} |" in markdown for t in range(models)) and "longer wins" in markdown
    groups = read_jsonl(run_dir / "data" / "ranked_heldout.jsonl", RankedPrompt)
    heldout_ids = {json.loads(line)["message_id"] for line in (run_dir / "data" / "ift_heldout.jsonl").read_text().splitlines()}
    logprobs = {t: by_key(read_jsonl(run_dir / "eval" / f"m{t}" / "heldout_logprobs.jsonl", ReplyLogprob)) for t in range(models)}
    for t in range(models):
        d = run_dir / "eval" / f"m{t}"
        judgements = read_jsonl(d / "rm_judgements.jsonl", Judgement)
        evaluated = [g for g in groups if g.message_id in {j.prompt_id for j in judgements}]
        assert len(evaluated) == summary[f"eval/m{t}/rm/prompts"] == 4  # eval.rm.max_prompts in the smoke experiment
        expected = rm_metrics(evaluated, judgements, load_judge_template(), 200, 0)  # smoke: eval.bootstrap_samples=200
        for key in ("pairs", "pairwise_acc", "pairwise_acc_ci_low", "pairwise_acc_ci_high", "length_pairwise_acc", "length_pairwise_acc_ci_low",
                    "spearman_ci_high", "kendall_tau_ci_low", "vs_length", "tie_rate", "five_best_pct", "exact_match_pct", "spearman",
                    "kendall_tau", "parse_fail_rate"):
            assert summary[f"eval/m{t}/rm/{key}"] == expected[key], (t, key)
        assert table[t]["pairs"] == str(expected["pairs"])
        nll = best_reply_nll(groups, logprobs[t])["best_reply_nll"]
        assert summary[f"eval/m{t}/heldout/best_reply_nll"] == nll and models_table[t]["held-out NLL"] == f"{nll:.4f}"
        replies = read_jsonl(d / "replies.jsonl", Candidate)
        assert len(replies) == 4 and all(r.prompt_id.removeprefix("oasst_") in heldout_ids for r in replies)
        assert summary[f"eval/m{t}/replies/tokens_mean"] == sum(r.num_tokens for r in replies) / 4
        alpaca = json.loads((d / "alpaca_eval.json").read_text())
        assert alpaca == [{"instruction": r.prompt, "output": r.response, "generator": f"M{t}"} for r in replies]
        if t == 0:
            assert not (d / "h2h_scores.jsonl").exists() and models_table[0]["h2h vs"] == "-" and models_table[0]["implicit acc"] == "-"
            continue
        implicit = implicit_reward_metrics(groups, logprobs[t], logprobs[t - 1], 1e-3, 200, 0)  # eval.implicit.against=previous
        for key, value in implicit.items():
            assert summary[f"eval/m{t}/implicit/{key}"] == value, (t, key)
        scores = read_jsonl(d / "h2h_scores.jsonl", Judgement)
        if t == 1:
            assert sorted((j.prompt_id, j.candidate) for j in scores) == sorted((r.prompt_id, side) for r in replies for side in (0, 1))
            m1_baseline = [j for j in scores if j.candidate == 1]
            assert "eval/m1/h2h/baseline_scores_from" not in summary
        else:  # M1 judged M0's replies in eval/m1 with the same settings and seeds: eval/m{t} judges only M_t's
            assert sorted((j.prompt_id, j.candidate) for j in scores) == sorted((r.prompt_id, 0) for r in replies)
            assert summary[f"eval/m{t}/h2h/baseline_scores_reused"] == 4 and summary[f"eval/m{t}/h2h/baseline_scores_from"] == "eval/m1"
            scores = scores + m1_baseline
        m0 = {r.prompt_id: r for r in read_jsonl(run_dir / "eval" / "m0" / "replies.jsonl", Candidate)}
        expected = pointwise_metrics(scores, {r.prompt_id: r for r in replies}, m0, 0.0, 200, 0)
        for key, value in expected.items():
            assert summary[f"eval/m{t}/h2h/{key}"] == value, (t, key)
        assert models_table[t]["h2h vs"] == "M0" and models_table[t]["judge"] == "M1" and models_table[t]["protocol"] == "pointwise"


def loop_for(run_dir: Path, *overrides: str, evaluate: bool = False):
    """The smoke loop; evaluation stages off unless a test is about them (they cost time)."""
    cfg = compose(["+experiment=smoke", f"hydra.run.dir={run_dir}", f"eval.in_loop={str(evaluate).lower()}", *overrides])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return build_loop(cfg, run_dir)


def test_second_run_skips_finished_stages(tmp_path):
    first = loop_for(tmp_path, "iteration.stop_after=m1").run()
    weights = tmp_path / "m1" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    second = loop_for(tmp_path, "iteration.stop_after=m1").run()
    assert weights.stat().st_mtime_ns == stamp  # not retrained
    assert second["m1/sft/loss_mean"] == first["m1/sft/loss_mean"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"data", "m1"}


def test_half_finished_run_continues_after_data(tmp_path):
    loop_for(tmp_path, "iteration.stop_after=data").run()
    assert not (tmp_path / "m1").exists()
    data_stamp = (tmp_path / "data" / "ift_train.jsonl").stat().st_mtime_ns
    summary = loop_for(tmp_path, "iteration.stop_after=m1").run()
    assert (tmp_path / "data" / "ift_train.jsonl").stat().st_mtime_ns == data_stamp
    assert (tmp_path / "m1" / "model" / "config.json").is_file() and summary["m1/sft/steps"] > 0


def test_changed_config_on_a_finished_stage_is_an_error(tmp_path):
    loop_for(tmp_path, "iteration.stop_after=data").run()
    with pytest.raises(StageConfigMismatch, match="different config"):
        loop_for(tmp_path, "iteration.stop_after=data", "data.build.heldout_fraction=0.5").run()


def test_prepare_data_cli_on_shared_file(oasst_validation, tmp_path):
    result = run_cli("srl.prepare_data", "data=oasst_local", f"data.source.path={oasst_validation}", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads((tmp_path / "counts.json").read_text())
    assert f"ift_train                                {counts['ift_train']}" in result.stdout
    assert counts["ift_train"] + counts["ift_heldout"] == 186
    heldout = set(json.loads((tmp_path / "heldout_tree_ids.json").read_text()))
    train_trees = {json.loads(line)["tree_id"] for line in (tmp_path / "ift_train.jsonl").read_text().splitlines()}
    assert heldout and not heldout & train_trees


def test_a_users_conversations_and_eft_rows_train_m1(tmp_path):
    """data=messages: the data stage writes the user's conversations (turns kept) and EFT rows, and M1 trains on every reply."""
    msgs = lambda *turns: [{"role": r, "content": c} for r, c in turns]  # noqa: E731
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": msgs(("user", f"Name colour {i}."), ("assistant", "Blue."),
                                                                            ("user", "Another?"), ("assistant", "Red."))}) + "\n"
                             for i in range(12)))
    eft = tmp_path / "eft.jsonl"
    eft.write_text(json.dumps({"prompt": "What is 2+2?", "response": "4", "judgement": "Correct.", "score": 5}) + "\n")
    run_dir = tmp_path / "run"
    loop_for(run_dir, "data=messages", f"data.instructions.path={chats}", "data.instructions.heldout_fraction=0.25",
             f"data.eft_rows.path={eft}", "iteration.stop_after=m1").run()
    summary = json.loads((run_dir / "summary.json").read_text())
    ift = [json.loads(line) for line in (run_dir / "data" / "ift_train.jsonl").read_text().splitlines()]
    assert len(ift) == 9 and summary["data/ift_heldout"] == 3 and summary["data/instructions_multi_turn"] == 12
    assert ift[0]["turns"][-1] == ["assistant", "Red."]
    eft_rows = [json.loads(line) for line in (run_dir / "data" / "eft_train.jsonl").read_text().splitlines()]
    assert eft_rows[-1]["mode"] == "rows" and eft_rows[-1]["target"] == "Correct.\nScore: 5"
    assert summary["m1/sft/data/ift_examples"] <= 9 and summary["m1/sft/steps"] > 0
    from srl.training.tiny import TinyModelSpec

    tok = TinyModelSpec(seed=0).load()[1]
    two_replies = len(tok("Blue.<|im_end|>\n", add_special_tokens=False)["input_ids"]) + len(tok("Red.<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert summary["m1/sft/data/ift_target_tokens"] == summary["m1/sft/data/ift_examples"] * two_replies


def test_given_pairs_join_the_iterations_pairs_and_every_pair_is_exported_in_trl_format(tmp_path):
    from srl.data.preference_sets import PreferenceSetSettings, load_preference_set
    from srl.training.dpo import encode_pair, reference_logprobs

    given = tmp_path / "given.jsonl"
    rows = [{"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A rock."},
            {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
             "rejected": [{"role": "assistant", "content": "No."}]},
            {"prompt": "Pick one.", "chosen": "A", "rejected": "B", "tie": True}]
    given.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "run"
    loop = loop_for(run_dir, f"pairs.extra=[{{name: mine, path: '{given}'}}]", "iteration.stop_after=iter1/pairs")
    loop.run()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iter1/pairs/extra/mine/read"] == 3 and summary["iter1/pairs/extra/mine/ties_skipped"] == 1
    assert summary["iter1/pairs/extra/mine/kept"] == 2
    pairs = [json.loads(line) for line in (run_dir / "iter1" / "pairs.jsonl").read_text().splitlines()]
    own = [p for p in pairs if p["source"] == "self"]
    mine = [p for p in pairs if p["source"] == "mine"]
    assert summary["iter1/pairs/kept"] == len(own) and summary["iter1/pairs/total"] == len(pairs)
    assert [(p["prompt"], p["chosen"], p["rejected"], p["chosen_score"]) for p in mine] == [
        ("Name a fruit.", "An apple.", "A rock.", None), ("Say hi.", "Hi!", "No.", None)]
    # their reference log-probs are M1's, as for the iteration's own pairs
    model, tok = loop.ctx.models.slot.get("m1", loop.ctx.models.spec(1), train=True)
    ref = reference_logprobs(model, [encode_pair(tok, "Say hi.", "Hi!", "No.", loop.dpo.max_length, True, True)], tok.pad_token_id, 4)[0]
    assert mine[1]["ref_chosen_logp"] == pytest.approx(ref.ref_chosen, abs=1e-4)
    assert mine[1]["ref_rejected_logp"] == pytest.approx(ref.ref_rejected, abs=1e-4)
    # the TRL export reads back as a preference set: the same pairs, in order, with scores and sources
    exported, skipped = load_preference_set(PreferenceSetSettings(name="x", path=str(run_dir / "iter1" / "pairs_trl.jsonl")))
    assert not any(skipped.values())
    assert [(p.prompt, p.chosen, p.rejected) for p in exported] == [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs]
    trl = [json.loads(line) for line in (run_dir / "iter1" / "pairs_trl.jsonl").read_text().splitlines()]
    assert [r["score_chosen"] for r in trl] == [p["chosen_score"] for p in pairs] and trl[-1]["source"] == "mine"
    assert trl[-1]["prompt"] == [{"role": "user", "content": "Say hi."}] and trl[-1]["chosen"] == [{"role": "assistant", "content": "Hi!"}]


def test_malformed_source_fails_before_training(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message_id": "a"}\n')
    result = run_cli("srl.run", "+experiment=smoke", "data=oasst_local", f"data.source.path={bad}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert f"{bad}:1: missing field 'parent_id'" in result.stderr
    assert not (tmp_path / "run" / "m1").exists()


class Stop(Exception):
    pass


FAST = ["sft.max_epochs=2", "iteration.num_models=2"]


def test_evaluation_stages_resume_and_rerun_alone(tmp_path):
    """eval/m0 and eval/m1 in the loop; a changed eval config reruns them and nothing else."""
    summary = loop_for(tmp_path, "sft.max_epochs=2", "iteration.stop_after=eval/m1", evaluate=True).run()
    assert [row["model"] for row in summary["eval/table"]] == ["M0", "M1"]
    weights = tmp_path / "m1" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = loop_for(tmp_path, "sft.max_epochs=2", "iteration.stop_after=eval/m1", "eval.h2h.prompts.limit=2", evaluate=True).run()
    assert weights.stat().st_mtime_ns == stamp  # M1 not retrained
    assert again["eval/m1/h2h/prompts"] == 2 and summary["eval/m1/h2h/prompts"] == 4
    assert len((tmp_path / "eval" / "m1" / "replies.jsonl").read_text().splitlines()) == 2


def test_run_stopped_mid_judging_resumes_to_identical_records(tmp_path):
    import shutil

    base = tmp_path / "base"
    loop_for(base, *FAST, "iteration.stop_after=m1").run()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(base, straight)
    shutil.copytree(base, resumed)
    loop_for(straight, *FAST, "iteration.stop_after=iter1/judgements").run()

    def stop_after_first_judge_chunk(stage: str, done: int) -> None:
        if stage == "judgements":
            raise Stop

    loop = loop_for(resumed, *FAST, "iteration.stop_after=iter1/judgements")
    loop.hook = stop_after_first_judge_chunk
    with pytest.raises(Stop):
        loop.run()
    partial = resumed / "iter1" / "judgements.jsonl.partial"
    written = partial.read_text().splitlines()
    assert 0 < len(written) < len((straight / "iter1" / "judgements.jsonl").read_text().splitlines())
    candidates_stamp = (resumed / "iter1" / "candidates.jsonl").stat().st_mtime_ns
    # A crash in the middle of writing the next chunk leaves a torn line; it must not survive.
    with partial.open("a") as fh:
        fh.write('{"prompt_id": "it1-p0')

    loop_for(resumed, *FAST, "iteration.stop_after=iter1/judgements").run()
    assert (resumed / "iter1" / "candidates.jsonl").stat().st_mtime_ns == candidates_stamp  # not redone
    assert not partial.exists()
    for name in ("prompt_attempts.jsonl", "prompts.jsonl", "candidates.jsonl", "judgements.jsonl"):
        assert (resumed / "iter1" / name).read_bytes() == (straight / "iter1" / name).read_bytes(), name
    assert (resumed / "iter1" / "judgements.jsonl").read_text().splitlines()[: len(written)] == written


def test_unparsable_judge_stops_with_a_reason(tmp_path):
    # One new token cannot hold "Score: N": every judgement is unparsable, so no pair exists.
    loop = loop_for(tmp_path, *FAST, "judge.sampling.max_new_tokens=1")
    with pytest.raises(NoPairsError, match="parse-failure rate 100%"):
        loop.run()
    assert (tmp_path / "iter1" / "judgements.jsonl").is_file()  # what was written stays
    assert not (tmp_path / "m2").exists()
    # The summary of a failed run says where it failed and keeps the metrics of the stages before.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("failed at iter1/pairs: NoPairsError")
    assert summary["iter1/judge/parse_fail_rate"] == 1.0 and summary["m1/sft/steps"] > 0


def test_no_pairs_carry_keeps_the_model_and_counts_it(tmp_path):
    loop_for(tmp_path, *FAST, "judge.sampling.max_new_tokens=1", "iteration.on_no_pairs=carry").run()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["iter1/pairs/kept"] == 0 and summary["m2/dpo/skipped"] == 1
    assert (tmp_path / "iter1" / "pairs.jsonl").read_text() == ""
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path / "m1" / "model").state_dict()
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m2" / "model").state_dict()
    assert all(torch.equal(m1[k], m2[k]) for k in m1)


def test_prompt_pool_source(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"instruction": f"Task number {i}: say something kind."}) + "\n" for i in range(10)))
    loop_for(tmp_path / "run", *FAST, "prompt_gen.source=pool", f"prompt_gen.pool_path={pool}", "prompt_gen.num_prompts=3",
             "iteration.stop_after=iter1/prompts").run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "iter1" / "prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["source"] == "pool" and r["prompt"].startswith("Task number") for r in rows)


def test_evaluate_cli_on_held_out_trees_with_a_baseline_model(tmp_path):
    from srl.models.loading import save_model
    from srl.training.tiny import TinyModelSpec

    # The baseline: another tiny model (a different seed), saved as a folder like any M_t.
    baseline = tmp_path / "baseline"
    save_model(*TinyModelSpec(seed=1).load(), baseline)
    out_dir = tmp_path / "eval"
    result = run_cli("srl.evaluate", "+experiment=smoke", "eval.rm.max_prompts=null", "judge.sampling.max_new_tokens=8",
                     f"eval.h2h.baseline={baseline}", "eval.h2h.prompts.limit=3", f"eval.implicit.reference={baseline}",
                     f"hydra.run.dir={out_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ("pairwise_acc", "five_best_pct", "exact_match_pct", "spearman", "kendall_tau", "parse_fail_rate", "win_rate"):
        assert f"eval/{'h2h' if key == 'win_rate' else 'rm'}/{key}" in result.stdout
    out = json.loads((out_dir / "summary.json").read_text())
    # The seed data's split holds out 9 trees, each with 2-4 ranked replies: every reply judged once.
    judged = (out_dir / "rm_judgements.jsonl").read_text().splitlines()
    assert out["eval/rm/prompts"] == 9 and len(judged) == out["eval/rm/replies"] >= 18
    train_trees = {json.loads(line)["message_tree_id"] for line in (ROOT / "srl" / "data" / "seed_oasst.jsonl").read_text().splitlines()}
    assert out["eval/rm/prompts"] < len(train_trees)
    # Both models answered the same 3 held-out prompts; the judge saw each pair in both orders.
    mine = [json.loads(line) for line in (out_dir / "replies.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (out_dir / "baseline" / "replies.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in mine] == [r["prompt_id"] for r in theirs] and len(mine) == 3
    assert [r["response"] for r in mine] != [r["response"] for r in theirs]
    # Pointwise (the default protocol): each side's reply scored alone, by the evaluated model (no run: no M1).
    scores = [json.loads(line) for line in (out_dir / "h2h_scores.jsonl").read_text().splitlines()]
    assert sorted((s["prompt_id"], s["candidate"]) for s in scores) == sorted((r["prompt_id"], side) for r in mine for side in (0, 1))
    assert out["eval/h2h/prompts"] == 3 and out["eval/h2h/baseline"] == str(baseline) and out["eval/h2h/protocol"] == "pointwise"
    assert out["eval/h2h/judge"] == "tiny-llama"
    # Implicit reward against the baseline model, from the log-probs of both on every held-out reply.
    assert out["eval/implicit/pairs"] > 0 and out["eval/implicit/reference"] == str(baseline)
    assert (out_dir / "heldout_logprobs.jsonl").is_file() and (out_dir / "reference" / "heldout_logprobs.jsonl").is_file()
    assert out["eval/table"][0]["model"] == "tiny-llama" and (out_dir / "eval.md").is_file()
    assert [r["generator"] for r in json.loads((out_dir / "alpaca_eval.json").read_text())] == ["tiny-llama"] * 3


def test_evaluate_cli_mt_bench_against_a_reference_file(tmp_path):
    questions = ROOT.parent / "shared" / "data" / "prompts" / "mt_bench_questions.jsonl"
    if not questions.is_file():
        pytest.skip("shared prompts not found")
    turns = [json.loads(line)["turns"][0] for line in questions.read_text().splitlines()]
    # AlpacaEval-format reference replies for all but the first question.
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps([{"instruction": t, "output": "A fixed reference reply.", "generator": "ref"} for t in turns[1:]]))
    out_dir = tmp_path / "eval"
    result = run_cli("srl.evaluate", "+experiment=smoke", "eval.rm.enabled=false", "eval.h2h.protocol=pairwise", "eval.h2h.prompts.kind=mt_bench",
                     f"eval.h2h.prompts.path={questions}", "eval.h2h.prompts.limit=null", "eval.h2h.reply_sampling.max_new_tokens=4",
                     "eval.h2h.judge_sampling.max_new_tokens=4", "eval.h2h.reply_sampling.batch_size=40",
                     "eval.h2h.judge_sampling.batch_size=40", f"eval.h2h.reference={reference}", f"hydra.run.dir={out_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads((out_dir / "summary.json").read_text())
    assert not any(k.startswith("eval/rm/") for k in out) and not (out_dir / "rm_judgements.jsonl").exists()
    assert out["eval/replies/count"] == 80 and out["eval/h2h/prompts_without_baseline"] == 1 and out["eval/h2h/prompts"] == 79
    assert out["eval/h2h/len_words_baseline"] == 4.0
    comparisons = [json.loads(line) for line in (out_dir / "h2h_comparisons.jsonl").read_text().splitlines()]
    assert len(comparisons) == 158 and "mt_bench_81" not in {c["prompt_id"] for c in comparisons}


def test_score_first_judge_mode_scores_every_reply_and_makes_pairs(tmp_path):
    loop_for(tmp_path, *FAST, "judge=score_first", "iteration.stop_after=iter1/pairs").run()
    judgements = [json.loads(line) for line in (tmp_path / "iter1" / "judgements.jsonl").read_text().splitlines()]
    candidates = (tmp_path / "iter1" / "candidates.jsonl").read_text().splitlines()
    assert len(judgements) == len(candidates) > 0
    for j in judgements:
        assert len(j["texts"]) == 1 and j["texts"][0].startswith("score-first: expected")
        assert j["scores"] == [j["score"]] and 0.0 <= j["score"] <= 5.0
    # Expected scores are continuous: with no ties, every prompt with 2+ replies gives a pair.
    pairs = (tmp_path / "iter1" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == len({j["prompt_id"] for j in judgements})


def test_lora_run_trains_adapters_against_the_adapter_off_reference_and_saves_plain_models(tmp_path):
    """peft=lora through M2: pairs carry no reference log-probs (DPO takes them with the adapter off),
    each model folder is a plain merged model, and only a fraction of the parameters trained."""
    summary = loop_for(tmp_path, *FAST, "peft=lora", "judge=score_first", "dpo.max_epochs=1").run()
    assert summary["status"] == "ok"
    for prefix in ("m1/sft", "m2/dpo"):
        assert 0 < summary[f"{prefix}/trainable_params"] < summary[f"{prefix}/params"] / 2
    pairs = [json.loads(line) for line in (tmp_path / "iter1" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["ref_chosen_logp"] is None and p["ref_rejected_logp"] is None for p in pairs)
    # One optimizer step over all pairs: its micro-batches saw the fresh adapter (B = 0), where the
    # policy is its reference, so every logged reward is 0 (a stored or wrong reference would not be).
    assert summary["m2/dpo/steps"] == 1
    assert abs(summary["m2/dpo/rewards/chosen_first"]) < 1e-4 and abs(summary["m2/dpo/rewards/rejected_first"]) < 1e-4
    m1 = AutoModelForCausalLM.from_pretrained(tmp_path / "m1" / "model").state_dict()
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m2" / "model").state_dict()
    assert not any("lora" in k for k in m2) and not (tmp_path / "m2" / "model" / "adapter_config.json").exists()
    assert any(not torch.equal(m1[k], m2[k]) for k in m1)  # the merged adapter moved the weights


def test_lora_run_keeping_adapters_alone_chains_them_on_the_base(tmp_path):
    summary = loop_for(tmp_path, *FAST, "peft=lora", "peft.save=adapter", "judge=score_first").run()
    assert summary["status"] == "ok"
    for t in (1, 2):
        assert (tmp_path / f"m{t}" / "adapter" / "adapter_config.json").is_file()
        assert not (tmp_path / f"m{t}" / "model").exists()
    loop = loop_for(tmp_path, *FAST, "peft=lora", "peft.save=adapter", "judge=score_first")
    assert [Path(a).parent.name for a in loop.spec_m(2).adapters] == ["m1", "m2"]
    m2, _ = loop.spec_m(2).load()
    m1, _ = loop.spec_m(1).load()
    assert any(not torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def kill_when(cmd: list[str], ready: Callable[[], bool], log: Path) -> None:
    """Start ``cmd`` and kill -9 it as soon as ``ready()`` (polled every 10 ms) is true."""
    import signal
    import time

    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {log.read_text()[-2000:]}"


def lines_in(path: Path, more_than: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return len(path.read_text().splitlines()) > more_than
        except OSError:  # not written yet, or renamed between the check and the read
            return False

    return ready


def results(run_dir: Path) -> dict[str, bytes]:
    """What a run computed: records, models, per-step logs, evaluation files (not times, logs or the manifest)."""
    skip = {"manifest.json", "summary.json", "table.md"}
    # a model card names its run dir in the command; the rest of it is what the run computed
    read = lambda p: p.read_bytes().replace(str(run_dir).encode(), b"<run dir>") if p.name == "README.md" else p.read_bytes()  # noqa: E731
    return {p.relative_to(run_dir).as_posix(): read(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in skip and p.parts[len(run_dir.parts)] in ("data", "m1", "m2", "iter1", "eval")}


def test_kill_9_anywhere_in_the_run_resumes_to_the_same_records_and_weights(tmp_path):
    from safetensors.torch import load_file

    # SFT: 7 steps an epoch x 8; DPO: 4 pairs, one a micro-batch, two a step, 6 epochs = 12 steps.
    # Generation in chunks of 2 items, so that every generation stage can be caught half-way.
    args = ["+experiment=smoke", "iteration.num_models=2", "iteration.checkpoint_every_n_steps=2",
            "dpo.batch_size=2", "dpo.micro_batch_size=1", "dpo.max_epochs=6", "prompt_gen.sampling.batch_size=2",
            "generation.sampling.batch_size=2", "judge.sampling.batch_size=2", "eval.h2h.reply_sampling.batch_size=2"]
    straight = run_cli("srl.run", *args, f"hydra.run.dir={tmp_path / 'straight'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "srl.run", *args, f"hydra.run.dir={run_dir}"]
    points = [  # (where, when): killed past step 9 of SFT, inside each generation stage, past step 5 of DPO, in M2's evaluation
        ("eval/m0", lines_in(run_dir / "eval" / "m0" / "rm_judgements.jsonl.partial", 0)),
        ("m1", lines_in(run_dir / "m1" / "train_steps.csv", 9)),
        ("iter1/prompts", lines_in(run_dir / "iter1" / "prompt_attempts.jsonl.partial", 1)),
        ("iter1/candidates", lines_in(run_dir / "iter1" / "candidates.jsonl.partial", 1)),
        ("iter1/judgements", lines_in(run_dir / "iter1" / "judgements.jsonl.partial", 1)),
        ("m2", lines_in(run_dir / "m2" / "train_steps.csv", 5)),
        ("eval/m2", lines_in(run_dir / "eval" / "m2" / "replies.jsonl.partial", 1)),
    ]
    for i, (where, ready) in enumerate(points):
        kill_when(cmd, ready, tmp_path / f"killed_{i}.log")
        manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {"stages": {}}
        assert where not in manifest["stages"], f"killed after {where} had finished"
        if where in ("m1", "m2"):
            assert (run_dir / where / "checkpoints" / "last.ckpt").is_file() and not (run_dir / where / "model").exists()
    assert "stage m1: resuming from checkpoint" in (tmp_path / "killed_2.log").read_text()
    assert "stage m2: resuming from checkpoint" in (tmp_path / "killed_6.log").read_text()
    resumed = run_cli("srl.run", *args, f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["m2/dpo/resumed_at_step"] < summary["m2/dpo/steps"]
    for stage in ("m1", "m2"):
        a, b = load_file(tmp_path / "straight" / stage / "model" / "model.safetensors"), load_file(run_dir / stage / "model" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{stage}: resumed weights differ from the uninterrupted run's"
        assert not (run_dir / stage / "checkpoints").exists()  # removed once the stage finished
    want, got = results(tmp_path / "straight"), results(run_dir)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
