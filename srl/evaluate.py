"""Judge evaluation against human rankings (paper Sec. 4.2, "reward modeling ability").

    python -m srl.evaluate                                   # the embedded model on the seed data's held-out trees
    python -m srl.evaluate model=hf model.name_or_path=outputs/.../m1/model \\
        data=oasst_local data.source.path=../shared/data/oasst1/en_validation.jsonl

The held-out trees come from the same seeded split by ``message_tree_id`` as training
(``data.build``), so evaluation prompts never overlap the training trees. Every reply of every
held-out prompt with two or more human-ranked replies is judged K times with the configured judge
(``judge``); the mean of the parsable samples is the reply's score. Reported (``eval/rm/*``):
pairwise accuracy (score ties count as wrong; the tie rate is reported), 5-best %, exact match %,
Spearman and Kendall tau averaged over prompts, judge parse-failure rate and score histogram.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from srl import aift, metrics, oasst
from srl.records import Candidate, Judgement, PartialJsonl, RankedPrompt, read_jsonl, write_json
from srl.run import CONF_DIR

log = logging.getLogger(__name__)


def ranked_candidates(groups: Sequence[RankedPrompt]) -> list[Candidate]:
    """Each human-ranked reply as a candidate record (prompt id = the prompt's message id)."""
    return [Candidate(g.message_id, i, g.prompt, reply, 0, True) for g in groups for i, reply in enumerate(g.replies)]


def rm_metrics(groups: Sequence[RankedPrompt], judgements: Sequence[Judgement], template: Any) -> dict[str, Any]:
    """The paper's judge-agreement metrics from judged replies of human-ranked groups."""
    scores = {(j.prompt_id, j.candidate): j.score for j in judgements}
    pairs = metrics.PairCounts(0, 0, 0, 0)
    hits = best = exact = exact_total = 0
    spearmans, kendalls = [], []
    for g in groups:
        s = [scores.get((g.message_id, i)) for i in range(len(g.replies))]
        pairs = pairs + metrics.pair_counts(s, g.ranks)
        h, b = metrics.best_hits(s, g.ranks, template.max_score)
        hits, best = hits + h, best + b
        match = metrics.exact_match(s, g.ranks)
        if match is not None:
            exact, exact_total = exact + int(match), exact_total + 1
        spearmans.append(metrics.spearman(s, g.ranks))
        kendalls.append(metrics.kendall_tau(s, g.ranks))
    spearman, spearman_undefined = metrics.mean_defined(spearmans)
    kendall, kendall_undefined = metrics.mean_defined(kendalls)
    out: dict[str, Any] = {
        "prompts": len(groups),
        "replies": sum(len(g.replies) for g in groups),
        "pairs": pairs.agree + pairs.disagree + pairs.tie,
        "pairs_unscored": pairs.unscored,
        "pairwise_acc": pairs.accuracy,
        "tie_rate": pairs.tie_rate,
        "five_best_pct": 100.0 * hits / best if best else None,
        "five_best_count": best,
        "exact_match_pct": 100.0 * exact / exact_total if exact_total else None,
        "spearman": spearman,
        "spearman_undefined": spearman_undefined,
        "kendall_tau": kendall,
        "kendall_undefined": kendall_undefined,
    }
    judged = aift.judgement_metrics(judgements, template)
    out["parse_fail_rate"] = judged["parse_fail_rate"]
    out.update({k: v for k, v in judged.items() if k.startswith("score_hist/")})
    return out


def evaluate_judge(model: Any, tokenizer: Any, groups: Sequence[RankedPrompt], judge: aift.JudgeSettings, seed: int, out_dir: Path) -> dict[str, Any]:
    """Judge every reply (resumable, written to ``rm_judgements.jsonl``) and compute the metrics."""
    store = PartialJsonl(out_dir / "rm_judgements.jsonl", Judgement)
    aift.judge_candidates(model, tokenizer, ranked_candidates(groups), judge, seed, 0, store)
    judgements = read_jsonl(store.finish(), Judgement)
    return rm_metrics(groups, judgements, judge.template)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    source = instantiate(cfg.data.source)
    judge = instantiate(cfg.judge)
    build = oasst.build(source.load(), instantiate(cfg.data.build), judge.template)
    groups = build.ranked_heldout
    if not groups:
        raise ValueError(f"no held-out prompt with two or more ranked replies in {source.describe()}; raise data.build.heldout_fraction")
    model_spec = instantiate(cfg.model)
    model, tokenizer = model_spec.load()
    result = evaluate_judge(model, tokenizer, groups, judge, cfg.seed, out_dir)
    named = {f"eval/rm/{k}": v for k, v in result.items()}
    write_json(out_dir / "eval_rm.json", {"model": getattr(model_spec, "name", str(model_spec)), "source": source.describe(), **named})
    print(f"judge evaluation of {getattr(model_spec, 'name', model_spec)} on {len(groups)} held-out prompts of {source.describe()}:")
    for key in ("pairwise_acc", "tie_rate", "five_best_pct", "exact_match_pct", "spearman", "kendall_tau", "parse_fail_rate"):
        value = result[key]
        print(f"  eval/rm/{key:<18} {'n/a' if value is None else f'{value:.4f}'}")
    print(f"  written: {out_dir / 'eval_rm.json'}")
    return named


if __name__ == "__main__":
    main()
