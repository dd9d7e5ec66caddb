"""How candidates are judged (``conf/judge``): the template, K samples, sampling, and the mode
(``sample``, ``score_first``, ``pairwise``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from srl.generation.sampling import SamplingSettings
from srl.judging.templates import JudgeTemplate, PairwiseTemplate

JUDGE_MODES = ("sample", "score_first", "pairwise")


JUDGE_BY = ("self", "external")


@dataclasses.dataclass
class JudgeSettings:
    """``conf/judge``: the format (template), K samples per reply (paper: 3) and their sampling.

    ``mode``: ``sample`` (the paper: justification then score, K samples averaged), ``score_first``
    (expected score from one forward pass, ``srl/judging/score_first.py``) or ``pairwise`` (a ``PairwiseTemplate``
    judges every ordered pair of a prompt's replies K times; a reply's score is its win fraction).

    ``by``: ``self`` (the paper: M_t judges its own replies) or ``external`` (the judge of
    ``conf/external_judge``, set into ``external`` by the entry point; ``srl/judging/backends.py``).
    """

    template: JudgeTemplate | PairwiseTemplate
    num_samples: int = 3
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(max_new_tokens=160))
    mode: str = "sample"
    by: str = "self"
    external: Any = None

    def __post_init__(self) -> None:
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"judge.mode must be one of {JUDGE_MODES}, got {self.mode!r}")
        if self.by not in JUDGE_BY:
            raise ValueError(f"judge.by must be one of {JUDGE_BY}, got {self.by!r}")
        if self.external is not None and getattr(self.external, "kind", None) == "score" and self.mode != "sample":
            raise ValueError(f"judge.mode={self.mode!r} needs judge replies; the external judge {self.external.describe()} "
                             "gives scores: use judge.mode=sample with it")
        if self.external is not None and self.mode == "score_first":
            raise ValueError(f"judge.mode=score_first reads the judge's next-token probabilities, which the external judge "
                             f"{self.external.describe()} does not expose: use judge.mode=sample")
        if (self.mode == "pairwise") != (self.template.kind == "pairwise"):
            raise ValueError(
                f"judge.mode={self.mode!r} does not fit the {self.template.kind} template '{self.template.name}': "
                "a pairwise template needs mode 'pairwise', and mode 'pairwise' a pairwise template (judge=pairwise)"
            )
        if self.num_samples < 1:
            raise ValueError(f"judge.num_samples must be >= 1, got {self.num_samples}")

    @property
    def scores_directly(self) -> bool:
        """True for a reward-model judge: one scalar per reply, no text, no rubric range."""
        return self.external is not None and self.external.kind == "score"

    @property
    def rubric(self) -> JudgeTemplate | PairwiseTemplate | None:
        """The template whose score range the metrics may use; None when a reward model scores."""
        return None if self.scores_directly else self.template
