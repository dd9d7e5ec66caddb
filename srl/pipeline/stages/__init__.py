"""The stages of a run, one file per kind: ``data``, ``sft`` (M1), ``iteration`` (prompts,
candidates, judgements, pairs of iteration t), ``dpo`` (M_{t+1}) and ``evaluation`` (eval/m{t}).

Each stage is a function of a ``StageContext`` (``srl/pipeline/context.py``) and its own settings; it
reads the files of the stages before it in the run dir and returns ``(metrics, outputs)`` for the
manifest. ``srl/pipeline/loop.py`` decides which stages run, in which order.
"""
