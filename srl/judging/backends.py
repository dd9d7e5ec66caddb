"""Who judges: the model itself (the paper's self-judge) or an external judge, behind one call.

Every place that judges (the loop's judging stage, the judge-quality evaluation, the head-to-head
referee, checkpoint selection) asks for judge *replies* through :func:`judge_texts` or, for a judge
that scores directly, for *scores* through :func:`judge_scores`. Two kinds of external judge:

- ``text`` (``srl.judging.openai_judge.OpenAIJudge``): writes a judge reply to the rendered judge
  prompt, which the template parses exactly as it parses the model's own (so a pointwise rubric,
  a pairwise verdict and the paper's head-to-head prompt all work with it);
- ``score`` (``srl.judging.reward_model.RewardModelJudge``): a scalar per (prompt, reply), no text
  and no template; its scores are unbounded, so metrics that need the rubric's range (score
  histogram, 5-best %, margin as a fraction of the range) are left out for it.

With several processes (``trainer=ddp``) an external judge runs on rank 0 only and its results are
broadcast: a paid API is asked once, not once per rank.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from srl.core import distributed
from srl.generation.sample import sample_chat
from srl.generation.sampling import SamplingSettings

JUDGE_KINDS = ("text", "score")


@runtime_checkable
class ExternalJudge(Protocol):
    """A judge that is not the model being trained or evaluated (``conf/external_judge``)."""

    kind: str  # "text" | "score"

    def describe(self) -> str:
        """A short name for logs, W&B and the summary (no secrets): ``openai:gpt-4o@https://...``."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters since construction (requests, cached, retries, malformed replies ...)."""
        ...


def judge_texts(
    model: Any, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], sampling: SamplingSettings, external: Any = None,
) -> list[str]:
    """One judge reply per rendered judge prompt: sampled from ``model`` or asked of ``external``.

    A reply the external judge could not give in a usable form (a malformed body) is ``""``, which
    every template parses as ``None``: an unparsable judgement, counted, never a made-up score.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per judge prompt is needed")
    if not prompts:
        return []
    if external is None:
        return [o.text for o in sample_chat(model, tokenizer, prompts, seeds, sampling)]
    if external.kind != "text":
        raise ValueError(f"the external judge {external.describe()} gives scores, not judge replies: it cannot answer a "
                         "judge prompt (a pairwise verdict, the score-first mode); use a rubric judge in sample mode")
    texts = distributed.on_main(lambda: list(external.complete(list(prompts), list(seeds), sampling)))
    assert texts is not None and len(texts) == len(prompts)
    return texts


def judge_scores(external: Any, items: Sequence[tuple[str, str]]) -> list[float]:
    """A ``score`` judge's scalar for each (prompt, reply), computed on rank 0 and broadcast."""
    if external.kind != "score":
        raise ValueError(f"the external judge {external.describe()} writes judge replies; judge_scores needs a score judge")
    if not items:
        return []
    scores = distributed.on_main(lambda: [float(s) for s in external.score(list(items))])
    assert scores is not None and len(scores) == len(items)
    return scores


def describe_judge(external: Any) -> str:
    """The judge's name as the summary records it: ``self`` or the external judge's description."""
    return "self" if external is None else external.describe()
