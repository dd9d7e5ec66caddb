"""Judge-free measures of a model on human-ranked replies: DPO's implicit reward and held-out NLL.

DPO trains M_t so that ``r(x, y) = log pi_t(y|x) - log pi_ref(y|x)`` (times beta) orders replies as
the preferences did. On *held-out* human pairs (a better-ranked reply ``b`` and a worse one ``w`` of
one prompt), the **implicit-reward accuracy** of M_t against a reference model (M0, or M_{t-1}) is
the share of pairs whose margin ``(log pi_t(b) - log pi_ref(b)) - (log pi_t(w) - log pi_ref(w))``
exceeds ``tie_tolerance`` (nats). A margin within the tolerance is a **tie**, never a win: when
pi_t == pi_ref every margin is exactly 0 and the accuracy is 0 with tie rate 1 (not 0.5). Beta only
scales the margin, so it does not enter. Intervals: 95% percentile bootstrap over prompts.

Log-probs are summed over a reply's tokens, given the prompt in the model's chat template
(``srl.training.encoding.encode_example``, cut at ``max_length``), in eval mode. They are computed in
the same batches (sorted by length) for every model, so identical models give identical sums.

**Held-out NLL** is the mean per-token negative log-likelihood of each prompt's human best reply
(the lowest rank present): the SFT objective on data no stage trained on.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import torch

from srl.data.partial import PartialJsonl
from srl.data.records import RankedPrompt
from srl.evaluation.intervals import with_interval
from srl.training.encoding import collate_right, encode_example
from srl.training.losses import model_logprobs, row_sums

Key = tuple[str, int]  # (prompt id, reply index)


@dataclasses.dataclass(frozen=True)
class ReplyLogprob:
    """Summed log-prob of one held-out reply given its prompt, and its token count (None: did not fit)."""

    prompt_id: str
    reply: int
    logp: float | None
    tokens: int


@dataclasses.dataclass
class ImplicitSettings:
    """``eval.implicit``: implicit-reward accuracy against M_{t-1} (``previous``: the reference DPO
    trained M_t against) or M0 (``start``) in the loop, or against ``reference`` (a model folder, Hub id or "embedded") in ``srl.evaluate``."""

    enabled: bool = True
    against: str = "previous"
    reference: str | None = None
    tie_tolerance: float = 1e-3
    max_length: int = 768
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.against not in ("start", "previous"):
            raise ValueError(f"eval.implicit.against must be 'start' or 'previous', got {self.against!r}")
        if self.tie_tolerance < 0:
            raise ValueError(f"eval.implicit.tie_tolerance must be >= 0, got {self.tie_tolerance}")


def ranked_pairs(group: RankedPrompt) -> list[tuple[int, int]]:
    """(better, worse) reply indices of every pair with different human ranks."""
    out = []
    for i, j in itertools.combinations(range(len(group.replies)), 2):
        if group.ranks[i] != group.ranks[j]:
            out.append((i, j) if group.ranks[i] < group.ranks[j] else (j, i))
    return out


@torch.no_grad()
def reply_logprobs(
    model: torch.nn.Module, tokenizer: Any, groups: Sequence[RankedPrompt], max_length: int, batch_size: int, store: PartialJsonl,
) -> None:
    """``ReplyLogprob`` of every reply of ``groups`` into ``store``, resumable by batch."""
    items = []
    for g in groups:
        for i, reply in enumerate(g.replies):
            encoded, _ = encode_example(tokenizer, g.prompt, reply, max_length)
            items.append((g.message_id, i, encoded))
    items.sort(key=lambda it: (len(it[2].input_ids) if it[2] else 0, it[0], it[1]))
    done = store.read(batch_size)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(len(done), len(items), batch_size):
        part = items[start:start + batch_size]
        fit = [e for _, _, e in part if e is not None]
        sums: list[float] = []
        if fit:
            batch = {k: v.to(device) for k, v in collate_right(fit, pad).items()}
            values, rows = model_logprobs(model, batch)
            sums = [float(x) for x in row_sums(values.float(), rows, len(fit))]
        it = iter(sums)
        store.append(ReplyLogprob(p, i, next(it) if e is not None else None, e.num_target_tokens if e is not None else 0) for p, i, e in part)
    model.train(was_training)


def by_key(records: Sequence[ReplyLogprob]) -> dict[Key, ReplyLogprob]:
    return {(r.prompt_id, r.reply): r for r in records}


def _margins(group: RankedPrompt, policy: Mapping[Key, ReplyLogprob], reference: Mapping[Key, ReplyLogprob]) -> list[tuple[float, int]]:
    """(implicit-reward margin, sign of better-minus-worse word count) of each pair both models scored."""
    out = []
    for b, w in ranked_pairs(group):
        keys = [(group.message_id, b), (group.message_id, w)]
        lp = [policy.get(k) for k in keys]
        ref = [reference.get(k) for k in keys]
        if any(x is None or x.logp is None for x in lp + ref):
            continue
        longer = len(group.replies[b].split()) - len(group.replies[w].split())
        out.append(((lp[0].logp - ref[0].logp) - (lp[1].logp - ref[1].logp), (longer > 0) - (longer < 0)))
    return out


def implicit_reward_metrics(
    groups: Sequence[RankedPrompt], policy: Mapping[Key, ReplyLogprob], reference: Mapping[Key, ReplyLogprob],
    tie_tolerance: float, samples: int, seed: int,
) -> dict[str, Any]:
    """``accuracy`` (margin > tolerance), ``tie_rate``, ``loss_rate``, ``margin_mean`` over the pairs of
    every prompt, with bootstrap intervals over prompts; ``pairs`` counts the pairs both models scored.
    ``length_accuracy``: "the longer reply wins" on the same pairs (equal word counts: not a win).
    Summed log-probs grow with length, so a model that raised every token's log-prob a little would
    "win" the pairs where the better reply is longer: compare with this."""
    units = [m for m in (_margins(g, policy, reference) for g in groups) if m]

    def share(test):
        def stat(us: Sequence[list[tuple[float, int]]]) -> float | None:
            pairs = [p for u in us for p in u]
            return sum(test(p) for p in pairs) / len(pairs) if pairs else None
        return stat

    def mean_margin(us: Sequence[list[tuple[float, int]]]) -> float | None:
        pairs = [p for u in us for p in u]
        return sum(m for m, _ in pairs) / len(pairs) if pairs else None

    out: dict[str, Any] = {"pairs": sum(len(u) for u in units), "prompts": len(units)}
    out.update(with_interval("accuracy", units, share(lambda p: p[0] > tie_tolerance), samples, seed))
    out["tie_rate"] = share(lambda p: abs(p[0]) <= tie_tolerance)(units)
    out["loss_rate"] = share(lambda p: p[0] < -tie_tolerance)(units)
    out.update(with_interval("margin_mean", units, mean_margin, samples, seed))
    out["length_accuracy"] = share(lambda p: p[1] > 0)(units)
    return out


def best_reply_nll(groups: Sequence[RankedPrompt], policy: Mapping[Key, ReplyLogprob]) -> dict[str, Any]:
    """Mean per-token NLL of each prompt's human best reply(s) (token-weighted), and the tokens counted."""
    nll = tokens = 0.0
    for g in groups:
        best = min(g.ranks)
        for i, r in enumerate(g.ranks):
            rec = policy.get((g.message_id, i))
            if r == best and rec is not None and rec.logp is not None and rec.tokens:
                nll, tokens = nll - rec.logp, tokens + rec.tokens
    return {"best_reply_nll": nll / tokens if tokens else None, "best_reply_tokens": int(tokens)}
