"""Meta-Rewarding through the loop on the tiny model: ``iter1/meta`` writes meta-judgements and judge pairs,
the pairs stage gives them M1's reference log-probs, and M2 trains on actor and judge pairs together; a
meta stage stopped mid-way resumes to the same records.

The tiny model never saw a meta-judge prompt, so it never writes a parsable verdict (the first test
shows it: every verdict counted unparsable, no judge pair). The others keep its sampled comparison
and append a verdict by a fixed rule (the shorter judgement wins; equal length: a tie), so the
stage's plumbing is tested on real judgements, real prompts and real training."""

from __future__ import annotations

import json
import shutil

import pytest
from test_run import loop_for

from srl.data.records import MetaJudgement, Pair, read_jsonl
from srl.judging import meta_judging

META = ["meta.enabled=true", "meta.responses=all", "meta.ranking=wins", "meta.sampling.max_new_tokens=8", "meta.sampling.batch_size=2",
        "dpo.max_length=1024", "judge.num_samples=3"]
RUN = ["iteration.num_models=2", *META]  # the smoke's 8 SFT epochs: the tiny judge then writes 'Score: N' about half the time


class Stop(Exception):
    pass


@pytest.fixture
def shorter_wins(monkeypatch):
    real = meta_judging.judge_texts

    def texts(model, tokenizer, prompts, seeds, sampling, external=None):
        out = real(model, tokenizer, prompts, seeds, sampling, external)
        verdicts = []
        for p, text in zip(prompts, out):
            a = p.split("<evaluation_a>\n")[1].split("\n</evaluation_a>")[0]
            b = p.split("<evaluation_b>\n")[1].split("\n</evaluation_b>")[0]
            verdicts.append(f"{text}\nWinner: {'tie' if len(a) == len(b) else 'A' if len(a) < len(b) else 'B'}")
        return verdicts

    monkeypatch.setattr(meta_judging, "judge_texts", texts)


@pytest.fixture(scope="module")
def m1_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("meta") / "base"
    loop_for(base, *RUN, "iteration.stop_after=m1").run()
    return base


def test_the_tiny_models_own_verdicts_do_not_parse_and_are_counted(m1_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(m1_run, run)
    summary = loop_for(run, *RUN, "iteration.stop_after=iter1/meta").run()
    records = read_jsonl(run / "iter1" / "meta_judgements.jsonl", MetaJudgement)
    assert summary["iter1/meta/replies"] == len(records) > 0
    assert summary["iter1/meta/verdicts"] == sum(len(r.verdicts) for r in records) == 6 * len(records)  # 3 judgements: 6 orders
    assert summary["iter1/meta/parse_fail_rate"] == 1.0 and summary["iter1/meta/judge_pairs"] == 0
    assert summary["iter1/meta/dropped/tied"] + summary["iter1/meta/dropped/no_parsed_judgement"] == len(records)


def test_a_meta_rewarding_iteration_trains_m2_on_actor_and_judge_pairs(m1_run, tmp_path, shorter_wins):
    run = tmp_path / "run"
    shutil.copytree(m1_run, run)
    loop = loop_for(run, *RUN, "iteration.stop_after=m2")
    assert loop.stages[loop.stages.index("iter1/judgements") + 1] == "iter1/meta"
    summary = loop.run()
    judge_pairs = read_jsonl(run / "iter1" / "judge_pairs.jsonl", Pair)
    assert summary["iter1/meta/judge_pairs"] == len(judge_pairs) > 0 and summary["iter1/meta/parse_fail_rate"] == 0.0
    for p in judge_pairs:  # the shorter judgement wins every comparison: the chosen one is never the longer
        assert len(p.chosen) <= len(p.rejected) and p.source == "judge" and "Score:" in p.chosen
    pairs = read_jsonl(run / "iter1" / "pairs.jsonl", Pair)
    judged = [p for p in pairs if p.source == "judge"]
    assert summary["iter1/pairs/judge/kept"] == len(judged) > 0 and summary["iter1/pairs/judge/read"] == len(judge_pairs)
    assert all(p.ref_chosen_logp is not None and p.ref_chosen_logp < 0 for p in judged)
    assert [(p.prompt, p.chosen, p.rejected) for p in judged] == [(p.prompt, p.chosen, p.rejected) for p in judge_pairs][:len(judged)]
    trl = [json.loads(line) for line in (run / "iter1" / "pairs_trl.jsonl").read_text().splitlines()]
    assert sum(r["source"] == "judge" for r in trl) == len(judged)
    # M2's DPO: both kinds, each with its own statistics, starting at policy = reference (ln 2)
    epochs = loop.dpo.max_epochs  # the pair counters sum the pairs each optimizer step saw
    assert summary["m2/dpo/judge_pairs"] == len(judged) and summary["m2/dpo/pairs"] == len(pairs) * epochs
    for kind in ("actor", "judge"):
        assert summary[f"m2/dpo/{kind}/loss_first"] == pytest.approx(0.6931, abs=0.02), kind
        assert f"m2/dpo/{kind}/rewards/accuracy_mean" in summary and f"m2/dpo/{kind}/rewards/margin_last" in summary
    assert summary["m2/dpo/judge/pairs"] == len(judged) * epochs and summary["m2/dpo/actor/pairs"] == (len(pairs) - len(judged)) * epochs


def test_a_meta_stage_stopped_mid_way_resumes_to_the_same_records(m1_run, tmp_path, shorter_wins):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    shutil.copytree(m1_run, straight)
    shutil.copytree(m1_run, resumed)
    loop_for(straight, *RUN, "iteration.stop_after=iter1/meta").run()

    def stop(stage: str, done: int) -> None:
        if stage == "meta":
            raise Stop

    loop = loop_for(resumed, *RUN, "iteration.stop_after=iter1/meta")
    loop.hook = stop
    with pytest.raises(Stop):
        loop.run()
    partial = resumed / "iter1" / "meta_judgements.jsonl.partial"
    total = len((straight / "iter1" / "meta_judgements.jsonl").read_text().splitlines())
    assert 0 < len(partial.read_text().splitlines()) < total
    loop_for(resumed, *RUN, "iteration.stop_after=iter1/meta").run()
    for name in ("judgements.jsonl", "meta_judgements.jsonl", "judge_pairs.jsonl"):
        assert (resumed / "iter1" / name).read_bytes() == (straight / "iter1" / name).read_bytes(), name


def test_verdict_first_reads_the_next_token_after_the_verdict_lead(tiny, tmp_path):
    """meta.mode=verdict_first: the verdict is the likelier of A and B as the next token after 'Winner:', the
    probabilities those of one forward pass over the chat-rendered meta prompt (computed here by hand)."""
    import torch

    from srl.data.partial import PartialJsonl
    from srl.data.records import Candidate, Judgement
    from srl.generation.sampling import SamplingSettings
    from srl.judging.meta_judging import MetaSettings, meta_judge_replies, rubric_text
    from srl.judging.templates import load_judge_template
    from srl.models.chat import render_prompt

    model, tok = tiny
    template = load_judge_template("additive5")
    c = Candidate("p", 0, "Name a colour.", "Red.", 2, True)
    j = Judgement("p", 0, ("Correct and short.\nScore: 4", "Wrong.\nScore: 1"), (4, 1), 2.5)
    settings = MetaSettings(enabled=True, mode="verdict_first", sampling=SamplingSettings(batch_size=4))
    store = PartialJsonl(tmp_path / "m.jsonl", MetaJudgement)
    meta_judge_replies(model, tok, [(c, j)], template, settings, 0, 1, store)
    (record,) = read_jsonl(store.finish(), MetaJudgement)
    assert record.orders == ((0, 1), (1, 0))
    for (a, b), text, verdict in zip(record.orders, record.texts, record.verdicts):
        prompt = settings.template.render(c.prompt, c.response, rubric_text(template), j.texts[a], j.texts[b])
        rendered = render_prompt(tok, prompt) + "Winner:"
        ids = tok(rendered, add_special_tokens=False)["input_ids"]
        a_id, b_id = (tok(rendered + f" {x}", add_special_tokens=False)["input_ids"][len(ids):] for x in "AB")
        gap = a_id[:-1]  # a lone-space token, if the tokenizer splits it off
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=torch.tensor([ids + gap])).logits[0, -1].double(), -1)
        pa, pb = float(probs[a_id[-1]]), float(probs[b_id[-1]])
        assert text == f"verdict-first: P(A)={pa / (pa + pb):.4f} P(B)={pb / (pa + pb):.4f}, A/B mass {pa + pb:.4f}"
        assert verdict == ("A" if pa > pb else "B")
