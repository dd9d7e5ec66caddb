"""How candidates are judged (``conf/judge``): the template, K samples, sampling, and the mode
(``sample``, ``score_first``, ``pairwise``)."""

from __future__ import annotations

import dataclasses

from srl.generation.sampling import SamplingSettings
from srl.judging.templates import JudgeTemplate, PairwiseTemplate

JUDGE_MODES = ("sample", "score_first", "pairwise")


@dataclasses.dataclass
class JudgeSettings:
    """``conf/judge``: the format (template), K samples per reply (paper: 3) and their sampling.

    ``mode``: ``sample`` (the paper: justification then score, K samples averaged), ``score_first``
    (expected score from one forward pass, ``srl/judging/score_first.py``) or ``pairwise`` (a ``PairwiseTemplate``
    judges every ordered pair of a prompt's replies K times; a reply's score is its win fraction).
    """

    template: JudgeTemplate | PairwiseTemplate
    num_samples: int = 3
    sampling: SamplingSettings = dataclasses.field(default_factory=lambda: SamplingSettings(max_new_tokens=160))
    mode: str = "sample"

    def __post_init__(self) -> None:
        if self.mode not in JUDGE_MODES:
            raise ValueError(f"judge.mode must be one of {JUDGE_MODES}, got {self.mode!r}")
        if (self.mode == "pairwise") != (self.template.kind == "pairwise"):
            raise ValueError(
                f"judge.mode={self.mode!r} does not fit the {self.template.kind} template '{self.template.name}': "
                "a pairwise template needs mode 'pairwise', and mode 'pairwise' a pairwise template (judge=pairwise)"
            )
        if self.num_samples < 1:
            raise ValueError(f"judge.num_samples must be >= 1, got {self.num_samples}")
