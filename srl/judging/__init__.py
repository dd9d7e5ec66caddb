"""Everything that turns (prompt, reply) into a score or a verdict: judge formats and their prompts
(``templates``; the texts srl ships in ``builtin_templates``), parsing a judge's reply (``parsing``), the judge settings (``settings``), pointwise
judging by sampling K judgements (``pointwise``) or by the score-first shortcut (``score_first``),
pairwise round robins (``pairwise``), and the EFT examples that teach a model to judge (``eft``).
May import core, data, models and generation; never training, evaluation or pipeline.
"""
