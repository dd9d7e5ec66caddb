"""Benchmark: the paper's judge (justification then score, K samples) vs the score-first judge.

Both judge the same human-ranked replies (held-out oasst1 first turns) with the same model and
rubric, through the loop's own ``judge_candidates`` on the engine:

* ``sample``: K samples of "justification ... Score: N" (T=0.7, top-p 0.9), parsed scores averaged;
* ``score_first``: the reply starts with "Score:" and the score is the expected value of the next
  token's distribution over 0..5 (one forward pass per reply, no sampling; ``srl/judging/score_first.py``).

It prints the wall time of each and their ratio, how well the two modes' scores agree on replies
both scored (Pearson, Spearman, mean absolute difference), each mode's parse-failure rate, and
each mode's agreement with the human rankings (pairwise accuracy, Spearman), all from one run.

    HF_HUB_OFFLINE=1 python experiments/bench_judge_modes.py --model runs/x/m1/model \\
        --groups runs/x/data/ranked_heldout.jsonl --max-groups 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from common import load_model

from srl.data.oasst import first_turns, load_local, ranked_prompts
from srl.judging.pointwise import judge_candidates
from srl.judging.settings import JudgeSettings

ROOT = Path(__file__).resolve().parents[1]
OASST = ROOT.parent / "shared" / "data" / "oasst1" / "en_validation.jsonl"


def load_groups(path: Path | None, limit: int | None, seed: int):
    from srl.data.records import RankedPrompt, read_jsonl
    from srl.core.subsets import subset

    if path is not None:
        groups = read_jsonl(path, RankedPrompt)
    else:
        groups = ranked_prompts(first_turns(load_local(OASST)))
    return subset(groups, limit, seed)


def pearson(xs: list[float], ys: list[float]) -> float | None:
    from srl.evaluation.judge_agreement import _pearson

    return _pearson(xs, ys) if len(xs) > 2 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded, a model folder (e.g. a run's m1/model) or a Hub id")
    parser.add_argument("--groups", type=Path, help="RankedPrompt JSONL (a run's data/ranked_heldout.jsonl); default: all ranked first turns of the shared oasst1 file")
    parser.add_argument("--max-groups", type=int, default=12)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-new", type=int, default=64, help="max new tokens per sampled judgement")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from srl.data.partial import PartialJsonl
    from srl.data.records import Judgement, read_jsonl
    from srl.evaluation.judge_agreement import _average_ranks
    from srl.evaluation.rm import ranked_candidates, rm_metrics
    from srl.generation.sampling import SamplingSettings
    from srl.judging.templates import load_judge_template

    model, tok = load_model(args.model)
    groups = load_groups(args.groups, args.max_groups, args.seed)
    candidates = ranked_candidates(groups)
    template = load_judge_template()
    sampling = SamplingSettings(0.7, 0.9, args.max_new, args.batch)
    modes = {"sample": JudgeSettings(template, args.k, sampling, "sample"),
             "score_first": JudgeSettings(template, 1, sampling, "score_first")}
    results, scores = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in modes.items():
            store = PartialJsonl(Path(tmp) / f"{name}.jsonl", Judgement)
            start = time.perf_counter()
            judge_candidates(model, tok, candidates, settings, args.seed, 0, store)
            seconds = time.perf_counter() - start
            judgements = read_jsonl(store.finish(), Judgement)
            rm = rm_metrics(groups, judgements, template)
            scores[name] = {(j.prompt_id, j.candidate): j.score for j in judgements}
            results[name] = {"seconds": seconds, "replies": len(judgements), "parse_fail_rate": rm["parse_fail_rate"],
                             "unscored_replies": sum(j.score is None for j in judgements), "pairwise_acc": rm["pairwise_acc"],
                             "tie_rate": rm["tie_rate"], "spearman_vs_humans": rm["spearman"]}
            if name == "score_first":
                masses = [float(j.texts[0].split("mass ")[1].split(";")[0]) for j in judgements]
                results[name]["score_token_mass_mean"] = sum(masses) / len(masses)

    both = [key for key, s in scores["sample"].items() if s is not None and scores["score_first"].get(key) is not None]
    xs, ys = [scores["sample"][k] for k in both], [scores["score_first"][k] for k in both]
    agreement = {
        "replies_scored_by_both": len(both),
        "pearson": pearson(xs, ys),
        "spearman": pearson(_average_ranks(xs), _average_ranks(ys)),
        "mean_abs_diff": sum(abs(x - y) for x, y in zip(xs, ys)) / len(both) if both else None,
    }
    ratio = results["sample"]["seconds"] / results["score_first"]["seconds"]
    print(f"\nJudge modes on {len(groups)} human-ranked prompts ({len(candidates)} replies), model {args.model}")
    print(f"{'mode':<13}{'seconds':>9}{'parse fail':>12}{'unscored':>10}{'pair acc':>10}{'ties':>7}{'rho humans':>12}")
    for name, r in results.items():
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{name:<13}{r['seconds']:>9.1f}{r['parse_fail_rate']:>12.3f}{r['unscored_replies']:>10}"
              f"{fmt(r['pairwise_acc']):>10}{fmt(r['tie_rate']):>7}{fmt(r['spearman_vs_humans']):>12}")
    print(f"wall ratio sample (K={args.k}) / score_first: {ratio:.1f}x")
    print(f"agreement on {agreement['replies_scored_by_both']} replies scored by both: Pearson {agreement['pearson']}, "
          f"Spearman {agreement['spearman']}, mean |diff| {agreement['mean_abs_diff']}")
    if "score_token_mass_mean" in results["score_first"]:
        print(f"score_first: mean probability on score tokens {results['score_first']['score_token_mass_mean']:.3f}")
    figures = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model, "groups": len(groups),
               "replies": len(candidates), "k": args.k, "modes": results, "wall_ratio": ratio, "agreement": agreement}
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
