"""Training a model: chat encoding with label masks and collation (``encoding``), the SFT data
build from oasst1 (``sft_data``), preference pairs from judged candidates (``pairs``), losses
(``losses``: SFT, DPO/IPO/RPO), the Lightning modules (``sft``, ``dpo``), step-weighted
micro-batches (``batching``), per-step statistics and checkpoints (``steps``), LR schedules,
LoRA/QLoRA (``adapters``), Lightning strategies (``strategies``) and the tiny Llama with a locally trained
tokenizer that tests and ``+experiment=smoke`` use (``tiny``). Never imports evaluation or pipeline.
"""
