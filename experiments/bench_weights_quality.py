"""Quality check of reduced-precision generation: does the engine's bfloat16 copy judge and answer
like the float32 model it was made from?

One run, one judge model (an M1: SmolLM2 as shipped almost never writes a parsable score), the
held-out human-ranked oasst1 first turns of the shared validation file (a seeded subset of prompts):

* **Judging** with the loop's own ``judge_candidates`` (additive 5-point rubric, K samples, T=0.7,
  top-p 0.9, the same per-item seeds) three times: float32, float32 again with another run seed (the
  noise floor: how much two float32 judges with different seeds disagree), and bfloat16. Reported
  per pair of runs: Spearman and Pearson of the per-reply mean scores and the mean absolute difference;
  per run: pairwise accuracy vs the human ranks with its 95% bootstrap interval, the pair count, the
  "longer reply wins" baseline on the same pairs, and the parse-failure rate.
* **Candidates**: N replies per self-instruct prompt (the loop's ``generate_candidates``, T=0.7,
  top-p 0.9) in float32 and bfloat16: length distribution (mean, quartiles, max) and truncation rate.

    HF_HUB_OFFLINE=1 python experiments/bench_weights_quality.py --model runs/x/m1/model --groups 40
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import OASST_VALIDATION, load_model, machine, sample_prompts


def pearson(xs, ys) -> float | None:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sx = sum((x - mx) ** 2 for x in xs) ** 0.5
    sy = sum((y - my) ** 2 for y in ys) ** 0.5
    return None if sx == 0 or sy == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy)


def agreement(a: dict, b: dict) -> dict:
    """Per-reply agreement of two judges' mean scores (replies both scored)."""
    from srl.evaluation.judge_agreement import _average_ranks

    both = [k for k, s in a.items() if s is not None and b.get(k) is not None]
    xs, ys = [a[k] for k in both], [b[k] for k in both]
    return {"replies": len(both), "pearson": pearson(xs, ys), "spearman": pearson(_average_ranks(xs), _average_ranks(ys)),
            "mean_abs_diff": sum(abs(x - y) for x, y in zip(xs, ys)) / len(both) if both else None,
            "same_score": sum(x == y for x, y in zip(xs, ys)) / len(both) if both else None}


def lengths(candidates) -> dict:
    n = sorted(c.num_tokens for c in candidates)
    q = statistics.quantiles(n, n=4)
    return {"count": len(n), "mean": statistics.fmean(n), "q1": q[0], "median": q[1], "q3": q[2], "max": n[-1],
            "truncated_rate": sum(not c.finished for c in candidates) / len(n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the judge: an M1 folder (a run's m1/model)")
    parser.add_argument("--groups", type=int, default=40, help="held-out ranked prompts (seeded subset); 0: all")
    parser.add_argument("--k", type=int, default=3, help="judge samples per reply")
    parser.add_argument("--judge-max-new", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=16, help="self-instruct prompts for the candidates' lengths")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from srl.data.oasst import first_turns, load_local, ranked_prompts
    from srl.data.partial import PartialJsonl
    from srl.data.records import Candidate, Judgement, PromptRecord, read_jsonl
    from srl.evaluation.rm import ranked_candidates, rm_metrics
    from srl.generation.candidates import CandidateSettings, generate_candidates
    from srl.generation.sampling import SamplingSettings
    from srl.judging.pointwise import judge_candidates
    from srl.judging.settings import JudgeSettings
    from srl.judging.templates import load_judge_template

    model, tok = load_model(args.model, dropout=0.0)
    model.eval()
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    groups = ranked_prompts(first_turns(load_local(OASST_VALIDATION)))
    if args.groups and args.groups < len(groups):
        groups = random.Random(args.seed).sample(groups, args.groups)
    candidates = ranked_candidates(groups)
    template = load_judge_template()
    judge = JudgeSettings(template, args.k, SamplingSettings(0.7, 0.9, args.judge_max_new, args.batch))
    runs = {"float32": (model, args.seed), "float32 (other seed)": (model, args.seed + 1), "bfloat16": (bf16, args.seed)}
    figures: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "model": args.model,
                     "groups": len(groups), "replies": len(candidates), "k": args.k, "judging": {}, "agreement": {}, "candidates": {}}
    scores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (m, seed) in runs.items():
            print(f"judging: {name} ...", flush=True)
            store = PartialJsonl(Path(tmp) / f"{name.replace(' ', '_')}.jsonl", Judgement)
            start = time.perf_counter()
            judge_candidates(m, tok, candidates, judge, seed, 0, store)
            seconds = time.perf_counter() - start
            judgements = read_jsonl(store.finish(), Judgement)
            scores[name] = {(j.prompt_id, j.candidate): j.score for j in judgements}
            rm = rm_metrics(groups, judgements, template, 1000, args.seed)
            figures["judging"][name] = {"seconds": seconds, **{k: rm[k] for k in (
                "pairs", "pairwise_acc", "pairwise_acc_ci_low", "pairwise_acc_ci_high", "length_pairwise_acc", "tie_rate", "parse_fail_rate", "spearman")}}
        for a, b in (("float32", "float32 (other seed)"), ("float32", "bfloat16")):
            figures["agreement"][f"{a} vs {b}"] = agreement(scores[a], scores[b])
        prompts, _ = sample_prompts(args.prompts, args.seed)
        records = [PromptRecord(f"p{i}", p, "bench") for i, p in enumerate(prompts)]
        cand = CandidateSettings(args.n, SamplingSettings(0.7, 0.9, args.max_new, args.batch))
        for name, m in (("float32", model), ("bfloat16", bf16)):
            print(f"candidates: {name} ...", flush=True)
            store = PartialJsonl(Path(tmp) / f"cand_{name}.jsonl", Candidate)
            start = time.perf_counter()
            generate_candidates(m, tok, records, cand, args.seed, 1, store)
            figures["candidates"][name] = {"seconds": time.perf_counter() - start, **lengths(read_jsonl(store.finish(), Candidate))}

    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\nJudge {args.model}: {len(groups)} held-out oasst1 prompts, {len(candidates)} replies, K={args.k}")
    print(f"{'run':<22}{'seconds':>9}{'pairs':>7}{'pairwise acc [95% CI]':>26}{'longer wins':>13}{'ties':>7}{'parse fail':>12}")
    for name, r in figures["judging"].items():
        ci = f"{fmt(r['pairwise_acc'])} [{fmt(r['pairwise_acc_ci_low'])}, {fmt(r['pairwise_acc_ci_high'])}]"
        print(f"{name:<22}{r['seconds']:>9.1f}{r['pairs']:>7}{ci:>26}{fmt(r['length_pairwise_acc']):>13}{fmt(r['tie_rate']):>7}{fmt(r['parse_fail_rate']):>12}")
    print(f"{'scores of':<32}{'replies':>8}{'Spearman':>10}{'Pearson':>9}{'mean |diff|':>13}{'same score':>12}")
    for name, a in figures["agreement"].items():
        print(f"{name:<32}{a['replies']:>8}{fmt(a['spearman']):>10}{fmt(a['pearson']):>9}{fmt(a['mean_abs_diff']):>13}{fmt(a['same_score']):>12}")
    print(f"{'candidates':<12}{'seconds':>9}{'count':>7}{'mean':>8}{'q1':>6}{'median':>8}{'q3':>6}{'max':>6}{'truncated':>11}")
    for name, c in figures["candidates"].items():
        print(f"{name:<12}{c['seconds']:>9.1f}{c['count']:>7}{c['mean']:>8.1f}{c['q1']:>6.0f}{c['median']:>8.0f}{c['q3']:>6.0f}{c['max']:>6}{c['truncated_rate']:>11.3f}")
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
