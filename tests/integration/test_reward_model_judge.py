"""A reward model as the judge, on a tiny Llama reward model built from a config: its scores are the
model's last-token logit over the chat-templated (prompt, reply), batching changes none of them, and
in a run it judges the loop's candidates, the judge-quality evaluation and the head-to-head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, read_jsonl
from srl.generation.sampling import SamplingSettings
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.reward_model import RewardModelJudge
from srl.judging.settings import JudgeSettings
from srl.judging.templates import load_judge_template, load_pairwise_template


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from srl.training.tiny import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    folder = tmp_path_factory.mktemp("rm") / "reward_model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ITEMS = [("What is 2+2?", "4."), ("What is 2+2?", "It is four, because two and two make four."),
         ("Name a colour.", "Blue"), ("Write a haiku about rain.", "Soft rain on the roof\nthe garden drinks it slowly\nmorning smells of earth")]


def test_score_is_the_last_token_logit_of_the_chat_templated_reply(reward_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    judge = RewardModelJudge(str(reward_model), batch_size=1)
    tok = AutoTokenizer.from_pretrained(reward_model)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model).eval()
    for (prompt, reply), score in zip(ITEMS, judge.score(ITEMS)):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}], tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        # by hand: the score head on the last position's hidden state, no padding anywhere
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
        assert score == pytest.approx(float(model.score(hidden)[0].detach()), abs=1e-5)
        assert text.endswith(reply + "<|im_end|>\n")


def test_batched_scores_equal_one_by_one(reward_model):
    one = RewardModelJudge(str(reward_model), batch_size=1).score(ITEMS)
    batched = RewardModelJudge(str(reward_model), batch_size=4).score(ITEMS)
    assert batched == pytest.approx(one, abs=1e-5)
    assert len({round(s, 4) for s in one}) == len(ITEMS)  # the replies get different rewards


def test_judging_with_a_reward_model_records_its_scores_and_their_range(reward_model, tmp_path):
    judge = RewardModelJudge(str(reward_model), batch_size=3)
    cands = [Candidate(f"p{i}", 0, p, r, 1, True) for i, (p, r) in enumerate(ITEMS)]
    settings = JudgeSettings(load_judge_template(), num_samples=3, sampling=SamplingSettings(batch_size=2), external=judge)
    store = PartialJsonl(tmp_path / "j.jsonl", Judgement)
    judge_candidates(None, None, cands, settings, 0, 1, store)
    records = read_jsonl(store.finish(), Judgement)
    expected = RewardModelJudge(str(reward_model)).score(ITEMS)
    assert [r.score for r in records] == pytest.approx(expected, abs=1e-5)
    assert all(len(r.scores) == 1 and r.texts == (repr(r.score),) for r in records)  # one score, not K samples
    m = judgement_metrics(records, settings.rubric)
    assert settings.rubric is None and m["parse_fail_rate"] == 0.0
    assert m["score_min"] == min(r.score for r in records) and m["score_max"] == max(r.score for r in records)
    assert not any(k.startswith("score_hist/") or k == "mean_score_frac" for k in m)  # no rubric range for a reward model


def test_a_reward_model_cannot_give_verdicts(reward_model):
    judge = RewardModelJudge(str(reward_model))
    with pytest.raises(ValueError, match="gives scores"):
        JudgeSettings(load_pairwise_template(), mode="pairwise", external=judge)
    with pytest.raises(ValueError, match="score_first"):
        JudgeSettings(load_judge_template(), mode="score_first", external=judge)


def test_a_classifier_with_several_labels_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from srl.training.tiny import train_tiny_tokenizer

    tok = train_tiny_tokenizer()
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                               num_labels=3, pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "clf")
    tok.save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match="num_labels=1"):
        RewardModelJudge(str(tmp_path / "clf")).score(ITEMS[:1])


def test_run_with_the_reward_model_judging_everywhere(reward_model, tmp_path):
    """judge.by=external and eval.h2h.judge=external: the loop's judgements, the judge-quality
    evaluation and the head-to-head referee are the reward model's scores; the summary names it."""
    from test_run import loop_for

    run = tmp_path / "run"
    rm = ["external_judge=reward_model", f"external_judge.path={reward_model}", "judge.by=external", "eval.h2h.judge=external"]
    summary = loop_for(run, "sft.max_epochs=2", "iteration.num_models=2", *rm, evaluate=True).run()
    judge = RewardModelJudge(str(reward_model))
    cands = read_jsonl(run / "iter1" / "candidates.jsonl", Candidate)
    records = {(j.prompt_id, j.candidate): j for j in read_jsonl(run / "iter1" / "judgements.jsonl", Judgement)}
    scores = judge.score([(c.prompt, c.response) for c in cands])
    assert [records[(c.prompt_id, c.candidate)].score for c in cands] == pytest.approx(scores, abs=1e-5)
    assert summary["judge/by"] == summary["iter1/judge/by"] == f"reward_model:{reward_model}"
    assert summary["iter1/judge/external/scored"] == len(cands) and summary["iter1/pairs/mean_margin_frac"] is None
    # each pair: the highest and the lowest reward of its prompt
    for pair in map(json.loads, (run / "iter1" / "pairs.jsonl").read_text().splitlines()):
        mine = [records[(c.prompt_id, c.candidate)].score for c in cands if c.prompt_id == pair["prompt_id"]]
        assert pair["chosen_score"] == max(mine) and pair["rejected_score"] == min(mine)
    for t in (1, 2):
        rm_judged = read_jsonl(run / "eval" / f"m{t}" / "rm_judgements.jsonl", Judgement)
        assert all(len(j.scores) == 1 and j.score is not None for j in rm_judged)
        assert summary[f"eval/m{t}/rm/five_best_pct"] is None and summary[f"eval/m{t}/rm/score_max"] >= summary[f"eval/m{t}/rm/score_min"]
        assert summary[f"eval/m{t}/h2h/judge"] == f"reward_model:{reward_model}" and summary[f"eval/m{t}/h2h/prompts_scored"] >= 1
        h2h = read_jsonl(run / "eval" / f"m{t}" / "h2h_scores.jsonl", Judgement)
        replies = {r.prompt_id: r for r in read_jsonl(run / "eval" / f"m{t}" / "replies.jsonl", Candidate)}
        mine = [j for j in h2h if j.candidate == 0]
        assert [j.score for j in mine] == pytest.approx(judge.score([(replies[j.prompt_id].prompt, replies[j.prompt_id].response) for j in mine]), abs=1e-5)
    assert "| M2 |" in (run / "eval" / "table.md").read_text()


def _select_run(tmp_path, reward_model, *extra):
    from test_run import loop_for

    rm = ["external_judge=reward_model", f"external_judge.path={reward_model}"]
    args = [*rm, "sft.select.every_steps=2", "sft.select.judge=external", "sft.select.keep_snapshots=true", "sft.select.prompts.limit=3",
            "iteration.stop_after=m1", *extra]
    loop = loop_for(tmp_path, *args)
    return loop, loop.run()


def test_checkpoint_selection_with_the_reward_model_records_the_choice_and_saves_it(tmp_path, reward_model):
    from safetensors.torch import load_file

    from srl.training.selection import snapshots

    loop, summary = _select_run(tmp_path, reward_model)
    folder = tmp_path / "m1" / "select"
    steps = [s for s, _ in snapshots(folder)]
    assert steps[0] == 2 and steps[-1] == summary["m1/sft/steps"] and summary["m1/sft/select/snapshots"] == len(steps)
    comparisons = [json.loads(line) for line in (folder / "comparisons.jsonl").read_text().splitlines()]
    assert len(comparisons) == len(steps) - 1 == summary["m1/sft/select/comparisons"]
    chosen = json.loads((folder / "chosen.json").read_text())
    assert chosen["chosen_step"] == summary["m1/sft/select/chosen_step"] and chosen["snapshots"] == steps
    # each comparison recomputed from the reward model's scores of the two checkpoints' replies
    judge = RewardModelJudge(path=str(reward_model))
    kept = steps[0]
    for c in comparisons:
        mine = {r.prompt_id: r for r in read_jsonl(folder / f"replies_step{c['candidate_step']:06d}.jsonl", Candidate)}
        theirs = {r.prompt_id: r for r in read_jsonl(folder / f"replies_step{c['kept_step']:06d}.jsonl", Candidate)}
        assert c["kept_step"] == kept and len(mine) == 3
        scored = read_jsonl(folder / f"scores_step{c['candidate_step']:06d}_vs_{c['kept_step']:06d}.jsonl", Judgement)
        by = {(j.prompt_id, j.candidate): j.score for j in scored}  # candidate 0: the later checkpoint's reply, 1: the kept one's
        wins = losses = ties = 0
        for p in mine:
            a, b = judge.score([(mine[p].prompt, mine[p].response)])[0], judge.score([(theirs[p].prompt, theirs[p].response)])[0]
            assert (by[(p, 0)], by[(p, 1)]) == (pytest.approx(a, abs=1e-5), pytest.approx(b, abs=1e-5))
            a, b = (0.0, 0.0) if mine[p].response == theirs[p].response else (by[(p, 0)], by[(p, 1)])  # the same reply: a tie
            wins, losses, ties = wins + (a > b), losses + (b > a), ties + (a == b)
        assert (c["wins"], c["losses"], c["ties"]) == (wins, losses, ties)
        kept = c["candidate_step"] if wins > losses else kept
    assert kept == chosen["chosen_step"]
    # the saved M1 holds the chosen snapshot's weights
    saved = load_file(tmp_path / "m1" / "model" / "model.safetensors")
    snap = torch.load(folder / f"step{kept:06d}.pt", weights_only=True)
    shared = [k for k in snap if k in saved]
    assert len(shared) >= len(snap) - 1 and all(torch.equal(saved[k], snap[k]) for k in shared)  # (tied embeddings are saved once)
    last = torch.load(folder / f"step{steps[-1]:06d}.pt", weights_only=True)
    assert kept == steps[-1] or any(not torch.equal(snap[k], last[k]) for k in shared)  # an earlier choice is not the last weights
    assert "| m1/sft/select/chosen_step |" in (tmp_path / "m1" / "model" / "README.md").read_text()


class OrderJudge:
    """A score judge that prefers one side of every comparison: selection asks about (candidate, kept) pairs in that order."""

    kind = "score"

    def __init__(self, prefer_candidate: bool) -> None:
        self.prefer_candidate = prefer_candidate

    def describe(self) -> str:
        return f"order judge ({'later' if self.prefer_candidate else 'earlier'})"

    def score(self, items):
        return [float((i % 2 == 0) == self.prefer_candidate) for i in range(len(items))]


@pytest.mark.parametrize("prefer_later", [True, False])
def test_a_judge_preferring_the_later_checkpoint_keeps_the_last_and_the_earlier_the_first(tmp_path, reward_model, prefer_later, monkeypatch):
    import srl.config.judges as judges

    monkeypatch.setattr(judges, "external_judge", lambda cfg: OrderJudge(prefer_later))
    # sampled replies (T=1): two checkpoints' replies differ (the same reply from both would be a tie, whatever the judge says)
    _, summary = _select_run(tmp_path, reward_model, "sft.select.keep_snapshots=false", "sft.select.reply_sampling.temperature=1.0")
    chosen = json.loads((tmp_path / "m1" / "select" / "chosen.json").read_text())
    comparisons = [json.loads(line) for line in (tmp_path / "m1" / "select" / "comparisons.jsonl").read_text().splitlines()]
    assert all(c["ties"] == 0 for c in comparisons)
    assert chosen["chosen_step"] == (chosen["snapshots"][-1] if prefer_later else chosen["snapshots"][0])
    assert len(chosen["snapshots"]) >= 3 and not list((tmp_path / "m1" / "select").glob("step*.pt"))  # snapshots deleted
