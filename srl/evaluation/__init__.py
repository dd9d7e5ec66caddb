"""Measuring a model: judge agreement with human ranks (``judge_agreement``), head-to-head replies,
verdicts and their bootstrap intervals (``head_to_head``), one model's whole evaluation
(``model_eval``), the evaluation table (``report``) and the sweep plots (``plots``).
Never imports pipeline or the entry points.
"""
