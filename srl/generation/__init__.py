"""Sampling text from a model: sampling settings and nucleus draws (``sampling``), the batched
engine and its KV-cache bookkeeping (``engine``, ``kv_cache``), chat-formatted sampling with per-row
seeds (``sample``), the vLLM backend (``vllm``), the slot that keeps one model in memory between
stages (``slot``), and the generation stages' work: self-instructed prompts (``prompts``) and the N
candidate replies per prompt (``candidates``). Never imports judging, training, evaluation or pipeline.
"""
