"""Stages of iteration t (paper Sec. 3.2-3.3): prompts, candidates, judgements, pairs.

Each reads the files of the stage before in ``iter{t}/`` and returns its metrics and outputs; the
generation stages write in resumable chunks stamped with their config (``srl.data.partial.PartialJsonl``),
opened before a model loads so that a half-finished stage of another config is refused first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from srl.core import distributed
from srl.data.partial import PartialJsonl
from srl.data.preference_sets import PreferencePair, load_preference_set
from srl.data.records import Candidate, IFTExample, Judgement, Pair, PromptAttempt, PromptRecord, read_jsonl, write_jsonl
from srl.generation.candidates import CandidateSettings, candidate_metrics, generate_candidates
from srl.generation.prompts import PromptGenSettings, demonstrations, generate_prompts, pool_prompts
from srl.judging.backends import describe_judge
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings
from srl.models.loading import HFModelSpec, load_tokenizer
from srl.pipeline.context import StageContext, StageResult
from srl.pipeline.stages.meta import read_judge_pairs
from srl.pipeline.tracking import SAMPLE_ROWS, prefixed
from srl.training.dpo import DPOSettings, EncodedPair, encode_pair, reference_logprobs
from srl.training.pairs import PairSettings, select_pairs, truncation_counts


def run_prompts(ctx: StageContext, t: int, settings: PromptGenSettings) -> StageResult:
    """Iteration t's prompts: generated few-shot by M0 (or ``prompt_gen.model``) and filtered, or sampled from a pool."""
    out = ctx.iter_dir(t) / "prompts.jsonl"
    seed, outputs = ctx.seed, []
    if settings.source == "pool":
        records, metrics = pool_prompts(settings.pool_path, settings, seed, t)
    else:
        human = demonstrations(settings, [ex.prompt for ex in read_jsonl(ctx.run_dir / "data" / "ift_train.jsonl", IFTExample)])
        earlier = [r.prompt for u in range(1, t) for r in read_jsonl(ctx.iter_dir(u) / "prompts.jsonl", PromptRecord)]
        # the half-finished attempts of another config are refused before a model loads
        store = PartialJsonl(ctx.iter_dir(t) / "prompt_attempts.jsonl", PromptAttempt, ctx.stamp(f"iter{t}/prompts"))
        spec = ctx.models.start if settings.model is None else HFModelSpec(settings.model)
        model, tokenizer = ctx.models.load("m0" if settings.model is None else f"prompt:{settings.model}", spec)
        records, metrics = generate_prompts(model, tokenizer, human, earlier, settings, seed, t, store, ctx.hook)
        outputs.append(str(store.finish()))
    if not records:
        ctx.no_pairs(
            f"iteration {t}: no prompt passed the filters ({metrics}); see {ctx.iter_dir(t) / 'prompt_attempts.jsonl'} "
            "for the rejected attempts and their reasons, and loosen prompt_gen.filters or raise prompt_gen.max_attempts"
        )
    write_jsonl(out, records)
    return prefixed(f"iter{t}/prompts", metrics), [str(out), *outputs]

def run_candidates(ctx: StageContext, t: int, settings: CandidateSettings) -> StageResult:
    """N replies of M_t to each prompt (``candidates.jsonl``, in resumable chunks)."""
    prompts = read_jsonl(ctx.iter_dir(t) / "prompts.jsonl", PromptRecord)
    store = PartialJsonl(ctx.iter_dir(t) / "candidates.jsonl", Candidate, ctx.stamp(f"iter{t}/candidates"))
    model, tokenizer = ctx.models.load_m(t)
    generate_candidates(model, tokenizer, prompts, settings, ctx.seed, t, store, ctx.hook)
    path = store.finish()
    return prefixed(f"iter{t}/candidates", candidate_metrics(read_jsonl(path, Candidate))), [str(path)]

def run_judgements(ctx: StageContext, t: int, judge: JudgeSettings) -> StageResult:
    """M_t (or the external judge, ``judge.by=external``) judges each candidate (``judgements.jsonl``,
    in resumable chunks); the metrics name the judge and count an external judge's requests."""
    candidates = read_jsonl(ctx.iter_dir(t) / "candidates.jsonl", Candidate)
    store = PartialJsonl(ctx.iter_dir(t) / "judgements.jsonl", Judgement, ctx.stamp(f"iter{t}/judgements"))
    model, tokenizer = ctx.models.load_m(t) if judge.external is None else (None, None)
    before = judge.external.stats() if judge.external is not None else {}
    judge_candidates(model, tokenizer, candidates, judge, ctx.seed, t, store, ctx.hook)
    path = store.finish()
    judgements = read_jsonl(path, Judgement)
    metrics = judgement_metrics(judgements, judge.rubric)
    metrics["by"] = describe_judge(judge.external) if judge.external is not None else f"self (M{t})"
    if judge.external is not None:
        metrics.update({f"external/{k}": v - before.get(k, 0) for k, v in judge.external.stats().items()})
    by_key = {(j.prompt_id, j.candidate): j for j in judgements}
    rows = []
    for c in candidates[:SAMPLE_ROWS]:
        j = by_key.get((c.prompt_id, c.candidate))
        rows.append([c.prompt_id, c.prompt, c.candidate, c.response, j.score if j else None, j.texts[0] if j and j.texts else ""])
    ctx.tracker.log_samples(f"iter{t}/judge/samples", ["prompt_id", "prompt", "candidate", "response", "score", "judge_text"], rows)
    return prefixed(f"iter{t}/judge", metrics), [str(path)]

def trl_rows(records: list[Pair]) -> list[dict]:
    """Pairs in TRL's conversational preference format (``prompt``/``chosen``/``rejected`` as messages), with their
    scores and source: what ``trl.DPOTrainer`` or ``eval.preference_sets`` / ``pairs.extra`` read back."""
    return [{"id": f"{p.source}:{p.prompt_id}" if p.source != "self" else p.prompt_id,
             "prompt": [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}], "rejected": [{"role": "assistant", "content": p.rejected}],
             "score_chosen": p.chosen_score, "score_rejected": p.rejected_score, "source": p.source} for p in records]


def given_pairs(settings: PairSettings) -> tuple[list[tuple[str, PreferencePair]], dict[str, int]]:
    """The ``pairs.extra`` sets' pairs with their set's name, tie rows left out and counted."""
    out, counts = [], {}
    for extra in settings.extra:
        pairs, skipped = load_preference_set(extra)
        kept = [p for p in pairs if not p.tie]
        counts[f"extra/{extra.name}/read"] = len(pairs)
        counts[f"extra/{extra.name}/ties_skipped"] = len(pairs) - len(kept)
        counts.update({f"extra/{extra.name}/skipped/{k}": v for k, v in skipped.items()})
        out += [(extra.name, p) for p in kept]
    return out, counts


def encode_selected(tokenizer: Any, selected: list[tuple[Candidate, Candidate, float, float]], max_length: int,
                    counts: dict[str, Any]) -> tuple[list[EncodedPair], list[tuple[Candidate, Candidate, float, float]]]:
    """The selected pairs encoded for DPO, and those kept; a prompt too long for ``max_length`` is counted and dropped."""
    encoded, kept = [], []
    for chosen, rejected, cs, rs in selected:
        pair = encode_pair(tokenizer, chosen.prompt, chosen.response, rejected.response, max_length, chosen.finished, rejected.finished)
        if pair is None:
            counts["dropped/prompt_too_long"] = counts.get("dropped/prompt_too_long", 0) + 1
            continue
        encoded.append(pair)
        kept.append((chosen, rejected, cs, rs))
    return encoded, kept


def run_pairs(ctx: StageContext, t: int, pair_settings: PairSettings, dpo: DPOSettings, judge: JudgeSettings, meta: bool = False) -> StageResult:
    """Preference pairs from the scores, any given ones (``pairs.extra``) and, with ``meta``, the meta stage's judge
    pairs (``judge_pairs.jsonl``), with M_t's reference log-probs of each reply (``pairs.jsonl``), also written in
    TRL's format (``pairs_trl.jsonl``)."""
    d = ctx.iter_dir(t)
    candidates = read_jsonl(d / "candidates.jsonl", Candidate)
    judgements = read_jsonl(d / "judgements.jsonl", Judgement)
    selected, counts = select_pairs(candidates, judgements, pair_settings, t)
    given, given_counts = given_pairs(pair_settings)  # read (and checked) before a model loads
    given += [("judge", p) for p in read_judge_pairs(ctx, t)] if meta else []
    if ctx.models.peft.enabled:  # the reference is M_t with the adapter off, computed during DPO: no model here
        model, tokenizer = None, load_tokenizer(ctx.models.spec(t))
    else:
        model, tokenizer = ctx.models.slot.get(f"m{t}", ctx.models.spec(t), train=True)
        model.to(distributed.local_device())
    encoded, kept = encode_selected(tokenizer, selected, dpo.max_length, counts)
    counts.update(truncation_counts(candidates, kept))  # of the pairs that fit dpo.max_length
    given_kept = []
    for name, gp in given:
        finished = (gp.chosen_finished, gp.rejected_finished) if isinstance(gp, Pair) else (True, True)
        pair = encode_pair(tokenizer, gp.prompt, gp.chosen, gp.rejected, dpo.max_length, *finished)
        if pair is None:
            given_counts[f"extra/{name}/dropped_prompt_too_long"] = given_counts.get(f"extra/{name}/dropped_prompt_too_long", 0) + 1
            continue
        encoded.append(pair)
        given_kept.append((name, gp))
    for extra in pair_settings.extra:
        given_counts[f"extra/{extra.name}/kept"] = sum(1 for name, _ in given_kept if name == extra.name)
    if meta:  # judge pairs whose judge prompt and judgement do not fit dpo.max_length are dropped and counted
        given_counts["judge/read"] = sum(1 for name, _ in given if name == "judge")
        given_counts["judge/kept"] = sum(1 for name, _ in given_kept if name == "judge")
        given_counts["judge/dropped_prompt_too_long"] = given_counts.pop("extra/judge/dropped_prompt_too_long", 0)
    counts.update(given_counts)
    if not encoded:
        judged = judgement_metrics(judgements, judge.rubric)
        ctx.no_pairs(
            f"iteration {t}: no usable preference pair from {len(candidates)} candidates ({counts}); judge parse-failure "
            f"rate {judged['parse_fail_rate']:.0%}, unscored replies {judged['unscored_replies']}. Read {d / 'judgements.jsonl'}: "
            "if the judge never writes 'Score: N', train M1 with more EFT data (sft.max_eft_examples, sft.max_epochs) or raise "
            "judge.sampling.max_new_tokens; if all scores tie, raise generation.num_candidates or judge.num_samples; "
            f"if replies are cut at max_new_tokens ({counts['truncated_candidates']} truncated candidates, "
            f"{counts['dropped/truncated']} prompts dropped by pairs.truncated={pair_settings.truncated}), raise "
            "generation.sampling.max_new_tokens"
        )
        write_jsonl(d / "pairs.jsonl", [])
        write_jsonl(d / "pairs_trl.jsonl", [])
        counts["kept"] = 0
        return prefixed(f"iter{t}/pairs", counts), [str(d / "pairs.jsonl"), str(d / "pairs_trl.jsonl")]
    if model is not None:
        with_ref = reference_logprobs(model, encoded, tokenizer.pad_token_id, dpo.ref_batch_size, ctx.precision)  # under training's autocast
    else:
        with_ref = [dataclasses.replace(p, ref_chosen=None, ref_rejected=None) for p in encoded]
    records = [
        Pair(c.prompt_id, c.prompt, c.response, r.response, cs, rs, p.ref_chosen, p.ref_rejected, c.finished, r.finished)
        for (c, r, cs, rs), p in zip(kept, with_ref)
    ]
    records += [dataclasses.replace(gp, ref_chosen_logp=p.ref_chosen, ref_rejected_logp=p.ref_rejected) if isinstance(gp, Pair) else
                Pair(gp.pair_id, gp.prompt, gp.chosen, gp.rejected, None, None, p.ref_chosen, p.ref_rejected, True, True, name)
                for (name, gp), p in zip(given_kept, with_ref[len(kept):])]
    path = d / "pairs.jsonl"
    write_jsonl(path, records)
    write_jsonl(d / "pairs_trl.jsonl", trl_rows(records))
    ctx.tracker.log_samples(
        f"iter{t}/pairs/samples", ["prompt_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"],
        [[p.prompt_id, p.prompt, p.chosen, p.rejected, p.chosen_score, p.rejected_score] for p in records],
    )
    own = [p for p in records if p.source == "self"]
    counts["kept"] = len(own)  # the iteration's own pairs; pairs.extra sets' are counted under extra/<name>/kept
    counts["total"] = len(records)
    # select_pairs counted these before prompts too long for dpo.max_length were dropped
    counts["chosen_tokens_mean"] = sum(c.num_tokens for c, _, _, _ in kept) / len(kept) if kept else None
    counts["rejected_tokens_mean"] = sum(r.num_tokens for _, r, _, _ in kept) / len(kept) if kept else None
    counts["mean_margin"] = sum(p.chosen_score - p.rejected_score for p in own) / len(own) if own else None
    template = judge.rubric  # None for a reward model: its scores have no declared range
    comparable = template is not None and counts["mean_margin"] is not None
    counts["mean_margin_frac"] = counts["mean_margin"] / (template.max_score - template.min_score) if comparable else None  # across formats
    return prefixed(f"iter{t}/pairs", counts), [str(path), str(d / "pairs_trl.jsonl")]
