"""Evaluation of one model (paper Sec. 4.2): judge quality against human ranks, and head-to-head.

    python -m srl.evaluate                                   # the embedded model, seed data's held-out trees
    python -m srl.evaluate model=hf model.name_or_path=outputs/.../m1/model \\
        data=oasst_local data.source.path=../shared/data/oasst1/en_validation.jsonl \\
        eval.h2h.baseline=embedded                           # + M1 vs SmolLM2 as shipped

Parts, each switchable in ``conf/eval``:

- **rm** (reward modelling, ``srl.evaluation.rm``): every reply of every held-out prompt with two or
  more human-ranked replies is judged K times with the configured judge; the mean of the parsable
  samples is the reply's score. Held-out trees come from the same seeded split by
  ``message_tree_id`` as training, so evaluation prompts never come from a training tree. Metrics
  (``eval/rm/*``, defined in ``srl.evaluation.judge_agreement``): pairwise accuracy (score ties count
  as wrong; the tie rate is reported), 5-best %, exact match %, Spearman and Kendall tau averaged
  over prompts, each with a 95% bootstrap interval over prompts and the same metric for the
  baseline "the longer reply wins" on the same pairs; judge parse-failure rate, score histogram.
- **implicit** (``srl.evaluation.implicit_reward``, no judge): each held-out reply's log-prob under
  the model (``heldout_logprobs.jsonl``); the held-out NLL of the human best replies
  (``heldout/best_reply_nll``) and, against a reference's log-probs of the same replies (M0 or
  M_{t-1} in the loop), the implicit-reward accuracy on the human pairs (``implicit/*``).
- **preference sets** (``eval.preference_sets``, ``srl.data.preference_sets``): the rm and implicit
  measures on each prompt / chosen / rejected set, as two-reply groups (``pref/<name>/...``).
- **replies**: one reply per evaluation prompt (``replies.jsonl``), its AlpacaEval export
  (``alpaca_eval.json``) and its mean length in tokens.
- **h2h** (head-to-head, ``srl.evaluation.head_to_head``): the replies against a baseline model's or
  a reference file's, judged by verdicts in both orders (``pairwise``) or by the rubric's score of
  each reply (``pointwise``); win/tie/loss with 95% bootstrap intervals (``eval/h2h/*``).

The loop runs the same evaluation after every model M_t (``srl.pipeline.loop``); ``srl.evaluation.report`` makes the
table with a row per model.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from srl.core.rundir import Stamp
from srl.core.subsets import subset
from srl.data import prompt_sets as evalsets
from srl.data.partial import PartialJsonl
from srl.data.preference_sets import PreferencePair, PreferenceSetSettings
from srl.data.records import Candidate, Judgement, PromptRecord, RankedPrompt, read_jsonl
from srl.evaluation import head_to_head as headtohead
from srl.evaluation import implicit_reward as implicit
from srl.evaluation import rm
from srl.evaluation.head_to_head import Comparison, H2HSettings
from srl.evaluation.implicit_reward import ImplicitSettings, ReplyLogprob
from srl.generation.slot import ModelSlot
from srl.judging.settings import JudgeSettings

log = logging.getLogger(__name__)


# Returns the baseline's replies by prompt id and the baseline's name; called after the model's own
# replies are written, so that a baseline model is loaded only then (one model in memory).
BaselineFn = Callable[[Sequence[PromptRecord]], tuple[dict[str, Candidate], str]]

# The reference's log-probs of the groups whose own log-probs are at a path (relative), None if none (logged).
ReferenceFn = Callable[[str, Sequence[RankedPrompt]], "dict[implicit.Key, ReplyLogprob] | None"]

LOGPROBS = "heldout_logprobs.jsonl"


@dataclasses.dataclass
class RMSettings:
    """``eval.rm``: judge K samples per reply (None: ``judge.num_samples``) on up to ``max_prompts`` prompts."""

    enabled: bool = True
    num_samples: int | None = None
    max_prompts: int | None = None
    seed: int = 0


@dataclasses.dataclass
class EvalSettings:
    """``conf/eval``: which evaluations run, standalone and (``in_loop``) after every model of a run."""

    rm: RMSettings
    h2h: H2HSettings
    implicit: ImplicitSettings = dataclasses.field(default_factory=ImplicitSettings)
    preference_sets: Sequence[PreferenceSetSettings] = ()
    in_loop: bool = True
    alpaca_export: bool = True
    bootstrap_samples: int = 1000  # 95% intervals of rm, implicit and preference-set metrics

    def __post_init__(self) -> None:
        if self.bootstrap_samples < 1:
            raise ValueError(f"eval.bootstrap_samples must be >= 1, got {self.bootstrap_samples}")
        self.preference_sets = [p if isinstance(p, PreferenceSetSettings) else PreferenceSetSettings(**dict(p)) for p in self.preference_sets]
        names = [p.name for p in self.preference_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval.preference_sets: names must differ, got {names}")


def pairs_as_groups(pairs: Sequence[PreferencePair]) -> list[RankedPrompt]:
    """A preference set as two-reply groups: chosen rank 0, rejected rank 1 (a tie label: both 0)."""
    return [RankedPrompt(p.prompt, (p.chosen, p.rejected), (0, 0) if p.tie else (0, 1), p.pair_id.split(":")[0], p.pair_id) for p in pairs]


@dataclasses.dataclass(frozen=True)
class GroupSet:
    """Human-ranked groups evaluated the same way: ``prefix`` names their metrics, ``folder`` their
    files (relative to the evaluation's folder; "" for the held-out oasst1 trees)."""

    prefix: str
    folder: str
    groups: Sequence[RankedPrompt]


def heldout_and_preference_sets(groups: Sequence[RankedPrompt], preference_sets: Sequence[tuple[str, Sequence[RankedPrompt]]]) -> list[GroupSet]:
    """The held-out trees (metrics ``rm/*``, ``implicit/*``, ``heldout/*``) and each preference set
    (``pref/<name>/rm/*`` ...), files under ``pref/<name>/``."""
    return [GroupSet("", "", groups)] + [GroupSet(f"pref/{name}/", f"pref/{name}", g) for name, g in preference_sets]


def _judge(
    model: Any, tokenizer: Any, gs: GroupSet, out_dir: Path, settings: EvalSettings, judge: JudgeSettings, seed: int, stamp: Stamp | None,
) -> dict[str, Any]:
    """rm metrics of one group set (the judge samples: the model in its generation format)."""
    folder = out_dir / gs.folder
    folder.mkdir(parents=True, exist_ok=True)
    groups = subset(gs.groups, settings.rm.max_prompts, settings.rm.seed) if not gs.folder else list(gs.groups)
    k = settings.rm.num_samples or judge.num_samples
    store = PartialJsonl(folder / "rm_judgements.jsonl", Judgement, stamp, on_stale="discard")
    judgements = rm.judge_groups(model, tokenizer, groups, dataclasses.replace(judge, num_samples=k), seed, store)
    stats = rm.rm_metrics(groups, judgements, judge.rubric, settings.bootstrap_samples, settings.rm.seed)
    result = {f"{gs.prefix}rm/{name}": v for name, v in stats.items()}
    result[f"{gs.prefix}rm/judge_samples"] = k
    return result


def _score(model: Any, tokenizer: Any, gs: GroupSet, out_dir: Path, settings: EvalSettings, stamp: Stamp | None) -> tuple[dict[str, Any], dict[Any, Any]]:
    """Held-out NLL of one group set and its replies' log-probs (the model as configured, for implicit rewards)."""
    (out_dir / gs.folder).mkdir(parents=True, exist_ok=True)
    imp = settings.implicit
    store = PartialJsonl(out_dir / gs.folder / LOGPROBS, ReplyLogprob, stamp, on_stale="discard")
    implicit.reply_logprobs(model, tokenizer, gs.groups, imp.max_length, imp.batch_size, store)
    logprobs = implicit.by_key(read_jsonl(store.finish(), ReplyLogprob))
    return {f"{gs.prefix}heldout/{name}": v for name, v in implicit.best_reply_nll(gs.groups, logprobs).items()}, logprobs


def exact_model(slot: ModelSlot, key: str, spec: Any) -> tuple[Any, Any]:
    """The model as configured (not its generation copy), on this process's device: for log-probs."""
    model, tokenizer = slot.get(key, spec, train=True)
    if slot.device is not None and getattr(model, "hf_device_map", None) is None:
        model.to(slot.device)
    return model, tokenizer


def evaluate_model(
    name: str, key: str, spec: Any, slot: ModelSlot, out_dir: Path, settings: EvalSettings, judge: JudgeSettings,
    groups: Sequence[RankedPrompt], prompts: Sequence[PromptRecord], baseline: BaselineFn | None, seed: int,
    stamp: Stamp | None = None, reference: ReferenceFn | None = None, h2h_judge: tuple[str, Any] | None = None,
    preference_sets: Sequence[tuple[str, Sequence[RankedPrompt]]] = (), baseline_scores: dict[str, Judgement] | None = None,
) -> dict[str, Any]:
    """Run the enabled evaluations of one model into ``out_dir``; metrics named ``rm/*``, ``heldout/*``,
    ``implicit/*``, ``replies/*``, ``h2h/*`` and ``pref/<set>/...``.

    Every output is written in chunks and resumes where it stopped; with a ``stamp`` (the stage and
    its config), chunks written under another config are discarded first, never mixed in. Models
    are loaded through ``slot`` (one in memory): the evaluated model, then the baseline model if
    any, then the head-to-head judge (``h2h_judge``: (slot key, spec); None: the evaluated model),
    then the implicit-reward ``reference`` if it is a model. Log-probs come from the model as configured,
    sampling from its generation copy (``ModelSlot``). ``baseline_scores``: ``score_pointwise``'s ``known``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {}
    sets = heldout_and_preference_sets(groups, preference_sets)
    if not groups:
        log.warning("eval rm: no held-out prompt with two or more ranked replies; skipped")
        sets = sets[1:]
    policy = {}
    if settings.implicit.enabled and sets:  # log-probs first, from the model as configured
        model, tokenizer = exact_model(slot, key, spec)
        for gs in sets:
            metrics, policy[gs.prefix] = _score(model, tokenizer, gs, out_dir, settings, stamp)
            result.update(metrics)
    model, tokenizer = slot.get(key, spec)  # then sampling, from the generation copy (conf/backend: weights)
    if settings.rm.enabled:
        for gs in sets:
            result.update(_judge(model, tokenizer, gs, out_dir, settings, judge, seed, stamp))
    if prompts and (settings.h2h.enabled or settings.alpaca_export):
        result.update(_replies_and_h2h(name, key, spec, slot, model, tokenizer, out_dir, settings, judge, prompts, baseline, stamp, h2h_judge,
                                       baseline_scores))
    if settings.implicit.enabled and reference is not None:
        for gs in sets:
            ref = reference(f"{gs.folder}/{LOGPROBS}" if gs.folder else LOGPROBS, gs.groups)
            if ref is None:
                continue
            imp = implicit.implicit_reward_metrics(gs.groups, policy[gs.prefix], ref, settings.implicit.tie_tolerance, settings.bootstrap_samples, settings.rm.seed)
            result.update({f"{gs.prefix}implicit/{k}": v for k, v in imp.items()})
            result[f"{gs.prefix}implicit/reference"] = getattr(reference, "name", None)
    return result


def _replies_and_h2h(
    name: str, key: str, spec: Any, slot: ModelSlot, model: Any, tokenizer: Any, out_dir: Path, settings: EvalSettings, judge: JudgeSettings,
    prompts: Sequence[PromptRecord], baseline: BaselineFn | None, stamp: Stamp | None, h2h_judge: tuple[str, Any] | None,
    baseline_scores: dict[str, Judgement] | None = None,
) -> dict[str, Any]:
    h2h, result = settings.h2h, {}
    store = PartialJsonl(out_dir / "replies.jsonl", Candidate, stamp, on_stale="discard")
    headtohead.generate_replies(model, tokenizer, prompts, h2h.reply_sampling, h2h.seed, store)
    replies = read_jsonl(store.finish(), Candidate)
    if settings.alpaca_export:
        evalsets.write_alpaca_eval(out_dir / "alpaca_eval.json", replies, name)
    result["replies/count"] = len(replies)
    result["replies/truncated_rate"] = sum(not r.finished for r in replies) / len(replies)
    result["replies/tokens_mean"] = statistics.fmean(r.num_tokens for r in replies)
    if not h2h.enabled or baseline is None:
        return result
    theirs, baseline_name = baseline(prompts)
    mine = {r.prompt_id: r for r in replies}
    missing = sum(p not in theirs for p in mine)
    if missing:
        log.warning("eval h2h: %d of %d prompts have no %s reply; they are left out", missing, len(mine), baseline_name)
    if missing == len(mine):
        raise ValueError(f"eval h2h: no prompt of the evaluation set has a reply from {baseline_name}; check eval.h2h.reference / prompts")
    judge_key, judge_spec = h2h_judge or (key, spec)
    external = judge_spec if judge_key == "external" else None  # conf/external_judge: no model to load
    judge_model, judge_tokenizer = (None, None) if external is not None else slot.get(judge_key, judge_spec)
    if h2h.protocol == "pointwise" and judge.mode == "pairwise":
        log.warning("eval h2h: the run's judge is pairwise (judge.mode=pairwise), which has no rubric to score replies with: "
                    "the head-to-head uses the pairwise protocol (the table's protocol column says so)")
    if h2h.protocol == "pointwise" and judge.mode != "pairwise":
        scoring = dataclasses.replace(judge, num_samples=h2h.num_samples or judge.num_samples, sampling=h2h.judge_sampling, external=external)
        scores = PartialJsonl(out_dir / "h2h_scores.jsonl", Judgement, stamp, on_stale="discard")
        judged = headtohead.score_pointwise(judge_model, judge_tokenizer, mine, theirs, scoring, h2h.seed, scores, baseline_scores)
        result["h2h/baseline_scores_reused"] = sum(1 for p in mine if p in theirs and p in (baseline_scores or {}))
        stats = headtohead.pointwise_metrics(judged, mine, theirs, h2h.tie_margin, h2h.bootstrap_samples, h2h.seed)
    else:
        comparisons = PartialJsonl(out_dir / "h2h_comparisons.jsonl", Comparison, stamp, on_stale="discard")
        headtohead.compare(judge_model, judge_tokenizer, mine, theirs, h2h, comparisons, external)
        stats = headtohead.h2h_metrics(read_jsonl(comparisons.finish(), Comparison), mine, theirs, h2h.bootstrap_samples, h2h.seed)
    result.update({f"h2h/{k}": v for k, v in stats.items()})
    result["h2h/prompts_without_baseline"] = missing
    result["h2h/baseline"] = baseline_name
    result["h2h/judge"] = name if h2h_judge is None else external.describe() if external is not None else h2h_judge[0].removeprefix("judge:")
    return result


@dataclasses.dataclass
class FileReference:
    """Reference log-probs an earlier evaluation wrote under ``folder`` (the loop: ``eval/m0``)."""

    name: str
    folder: Path

    def __call__(self, relative: str, groups: Sequence[RankedPrompt]) -> dict[implicit.Key, ReplyLogprob] | None:
        path = self.folder / relative
        if not path.is_file():
            log.warning("eval implicit: %s has no reference log-probs (%s); implicit-reward accuracy against %s skipped", self.folder, relative, self.name)
            return None
        return implicit.by_key(read_jsonl(path, ReplyLogprob))


@dataclasses.dataclass
class ModelReference:
    """Reference log-probs computed with a reference model, kept under ``out_dir/reference``."""

    name: str
    spec: Any
    slot: ModelSlot
    out_dir: Path
    settings: ImplicitSettings
    stamp: Stamp | None = None

    def __call__(self, relative: str, groups: Sequence[RankedPrompt]) -> dict[implicit.Key, ReplyLogprob]:
        model, tokenizer = exact_model(self.slot, f"reference:{self.name}", self.spec)
        path = self.out_dir / "reference" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        store = PartialJsonl(path, ReplyLogprob, self.stamp, on_stale="discard")
        implicit.reply_logprobs(model, tokenizer, groups, self.settings.max_length, self.settings.batch_size, store)
        return implicit.by_key(read_jsonl(store.finish(), ReplyLogprob))


def reference_baseline(path: str | Path, name: str | None = None) -> BaselineFn:
    """Baseline replies from a file (srl replies.jsonl or AlpacaEval JSON), named ``name`` or the path."""
    def load(prompts: Sequence[PromptRecord]) -> tuple[dict[str, Candidate], str]:
        found, _ = evalsets.read_reference(path, prompts)
        return found, name or str(path)

    return load


def model_baseline(name: str, spec: Any, slot: ModelSlot, out_dir: Path, h2h: H2HSettings, stamp: Stamp | None = None) -> BaselineFn:
    """Replies of a baseline model, generated (and kept) under ``out_dir``."""
    def load(prompts: Sequence[PromptRecord]) -> tuple[dict[str, Candidate], str]:
        store = PartialJsonl(out_dir / "replies.jsonl", Candidate, stamp, on_stale="discard")
        model, tokenizer = slot.get(f"baseline:{name}", spec)
        headtohead.generate_replies(model, tokenizer, prompts, h2h.reply_sampling, h2h.seed, store)
        return {r.prompt_id: r for r in read_jsonl(store.finish(), Candidate)}, name

    return load
