"""GPU proof (issue 20): srl's GPU paths on one GPU in one process, a table printed and a JSON written.

    bash experiments/gpu_check.sh                      # the H200 run (installs the carried wheels first)
    python experiments/gpu_check.py --tiny --out x.json # every section at tiny shapes on the CPU (a test runs this)

Random-initialised models of real shapes built from configs (no weights travel), bf16 on the GPU:

* ``rates``: bf16 matmul TFLOP/s and device-to-device copy GB/s (read + write bytes), measured here;
  every fraction below is against these two numbers, not a data-sheet peak.
* ``exactness``: greedy engine output equals HF ``generate`` token for token (tiny model, fp32,
  shared prefix, stop tokens and refill at batch 2), and the implicit rewards at DPO step 0 under
  bf16-mixed: srl's path (reference log-probs computed before training under the training autocast,
  ``dpo.reference_logprobs(precision=)``) and, for comparison, a float32 reference outside autocast
  (what srl did before this check found it).
* ``generation``: srl's engine against one batched HF ``generate`` call (left padding) on the same
  random prompts of a Llama-3-8B shape: decode tokens/s at batch 16, 64, 256 (greedy) and at 64
  sampled (T 0.7, top-p 0.9), and the fraction of the HBM roofline = weight bytes read per step x
  decode steps/s / copy bandwidth (KV-cache reads not counted; a second figure counts them).
* ``training``: srl's SFT and DPO Lightning modules under the Trainer of ``conf/trainer/gpu.yaml``
  (bf16-mixed): a Llama-3.2-1B shape fully fine-tuned and the 8B shape with LoRA (``conf/peft/qlora``'s
  rank, no 4-bit: bitsandbytes is not there; gradient checkpointing as ``experiment/qlora_7b``):
  step time, tokens/s, MFU (formula in each row), peak memory next to the experiment files' arithmetic.
* ``fsdp``: one SFT step under ``conf/trainer/fsdp.yaml`` with devices=1, then srl's gather and save
  (``strategies.full_state_dict`` + ``adapters.save_trained``, what ``RunModels.save`` composes); the
  folder loads with ``from_pretrained`` and gives the same logits.
* ``loop``: ``python -m srl.run +experiment=smoke trainer=gpu logger=none`` in a subprocess: summary
  status, stages in the manifest, and the device of the model at every engine call and training fit
  (recorded by a wrapper around srl's own functions; srl records no device itself).

A failing section records its error (type, message, traceback tail) and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: srl need not be pip-installed
sys.path.insert(0, str(ROOT / "experiments"))

import torch  # noqa: E402
from common import machine  # noqa: E402

# Llama-3-8B and Llama-3.2-1B shapes (their config.json values); FSDP_SHAPE is small so its save and
# reload take seconds. Tiny shapes keep the same structure (GQA, untied/tied head) at CPU size.
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False)
LLAMA32_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                  vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=True)
FSDP_SHAPE = dict(LLAMA32_1B, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=16)
TINY_8B = dict(LLAMA3_8B, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048)
TINY_1B = dict(LLAMA32_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048)

FULL = dict(big=LLAMA3_8B, small=LLAMA32_1B, fsdp=FSDP_SHAPE, gen_batches=[16, 64, 256], sampled_batch=64, prompt_len=128, new_tokens=128,
            seq=1024, sft_micro=8, dpo_micro=4, lora_micro=4, timed_steps=3, fsdp_seq=512, matmul=8192, copy_mib=4096, loop_timeout=300)
TINY = dict(big=TINY_8B, small=TINY_1B, fsdp=TINY_1B, gen_batches=[2, 4], sampled_batch=4, prompt_len=16, new_tokens=8,
            seq=32, sft_micro=2, dpo_micro=2, lora_micro=2, timed_steps=1, fsdp_seq=16, matmul=256, copy_mib=64, loop_timeout=240)
# The tiny loop: M1 -> M2 without the in-loop evaluation; a judge that never parses carries M1 over
# (the check is where tensors live, not the tiny model's quality).
TINY_LOOP = ["iteration.num_models=2", "eval.in_loop=false", "iteration.on_no_pairs=carry", "sft.max_epochs=1", "sft.max_eft_examples=8",
             "prompt_gen.num_prompts=2", "judge.num_samples=1", "judge.sampling.max_new_tokens=24"]

ROWS: list[dict[str, Any]] = []  # the printed table: section, item, value, target or expected
CACHE: dict[str, Any] = {}  # the 8B-shape model, built once for generation and LoRA training


def row(section: str, item: str, value: Any, target: str = "") -> None:
    ROWS.append({"section": section, "item": item, "value": value, "target": target})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_reset(device: torch.device) -> None:
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def build_llama(shape: dict, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    """A LlamaForCausalLM of ``shape`` with random weights, built on ``device`` in ``dtype``, train mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=None, pad_token_id=0, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = None  # random weights: no row stops early, both sides decode every step
    model.generation_config.pad_token_id = 0
    return model.to(device=device, dtype=dtype).train()


def matmul_params(model: torch.nn.Module) -> int:
    """Parameters that take part in a matmul per token: all but an untied input embedding (a lookup)."""
    total = sum(p.numel() for p in model.parameters())
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    return total if emb.weight is head.weight else total - emb.weight.numel()


# ---------------------------------------------------------------- rates
def section_rates(plan: dict, device: torch.device) -> dict:
    n, reps = plan["matmul"], 20
    out: dict[str, Any] = {}
    for dtype in (torch.bfloat16, torch.float32):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        out[f"matmul_tflops_{str(dtype).split('.')[-1]}"] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
    numel = plan["copy_mib"] * 2**20 // 2
    src = torch.empty(numel, device=device, dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        dst.copy_(src)
    sync(device)
    out["copy_gbs"] = 2 * src.numel() * src.element_size() * reps / (time.perf_counter() - start) / 1e9  # read + write
    out["matmul_size"], out["copy_mib"] = n, plan["copy_mib"]
    row("rates", f"bf16 matmul {n}^3", f"{out['matmul_tflops_bfloat16']:.3g} TFLOP/s", "H200 ~790")
    row("rates", f"copy {plan['copy_mib']} MiB (read+write)", f"{out['copy_gbs']:.1f} GB/s", "H200 ~4300")
    return out


# ---------------------------------------------------------------- exactness
def greedy_exactness(device: torch.device) -> dict:
    """The engine (shared prefix, refill at batch 2, stop tokens) against per-prompt HF generate, fp32."""
    from srl.generation.engine import Engine
    from srl.generation.sampling import SamplingSettings
    from srl.models.chat import render_prompt
    from srl.training.tiny import TinyModelSpec

    model, tok = TinyModelSpec(seed=0).load()
    model = model.to(device).float().eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger weights than the default init, so greedy output depends on the context
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    preamble = "You are a careful assistant. Read the question, think about it, and answer in one short paragraph.\n\n"
    questions = ["hi", "What is tea?", "Explain how a bicycle stays upright while moving, in detail.", "Name a colour.",
                 "Write a haiku about rain.", "hi", "Count to three.", "Why is the sky blue? Give the physics."]
    prompts = [tok(render_prompt(tok, preamble + q), add_special_tokens=False)["input_ids"] for q in questions]
    stops = [i for i in range(len(tok)) if i % 5 == 0]
    settings = SamplingSettings(temperature=0.0, max_new_tokens=12, batch_size=2)
    engine = Engine(model, settings, tok.pad_token_id, stops)
    with torch.no_grad():
        got = engine.run(prompts, [0] * len(prompts))
        equal, first_mismatch = 0, None
        for i, (ids, (new, _)) in enumerate(zip(prompts, got)):
            x = torch.tensor([ids], device=device)
            ref = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=12,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stops)[0, len(ids):].tolist()
            cut = next((j + 1 for j, t in enumerate(ref) if t in stops), len(ref))
            if new == ref[:cut]:
                equal += 1
            elif first_mismatch is None:
                first_mismatch = {"prompt": i, "engine": new, "hf": ref[:cut]}
    return {"prompts": len(prompts), "equal": equal, "greedy_equal": equal == len(prompts), "first_mismatch": first_mismatch,
            "prefix_tokens": engine.prefix_len, "joins": engine.joins, "lengths": sorted({len(n) for n, _ in got})}


def section_exactness(plan: dict, device: torch.device, trainer_kw: dict, tmp: Path) -> dict:
    out = {"greedy": greedy_exactness(device)}
    g = out["greedy"]
    row("exactness", "greedy engine == HF generate (tiny, fp32)", f"{g['equal']}/{g['prompts']}", "all")
    from srl.training.tiny import TinyModelSpec

    model, _ = TinyModelSpec(seed=0).load()
    model.to(device)
    run = train_run("tiny_dpo", model, "dpo", micro=2, seq=plan["seq"], steps=1, trainer_kw=trainer_kw, tmp=tmp, device=device, lora=False)
    out["dpo_step0"] = run
    row("exactness", "DPO step-0 max|reward|, srl (ref under the training autocast)", f"{run['step0_max_abs_reward']:.2e}", "~0")
    row("exactness", "DPO step-0 max|reward|, ref in fp32 outside autocast (before the fix)", f"{run['step0_max_abs_reward_ref_fp32']:.2e}", "the bias fixed")
    return out


# ---------------------------------------------------------------- generation
def random_prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Distinct random prompts of up to 8 lengths (left padding matters for HF, refill widths for the engine)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length - (i % 8) * max(1, length // 16),), generator=g).tolist() for i in range(batch)]


def time_engine(model, prompts, settings, device) -> dict:
    from srl.generation.engine import Engine

    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        Engine(model, settings, 0, []).next_token_logits(prompts)
        sync(device)
        prefill = time.perf_counter() - start
        engine = Engine(model, settings, 0, [])  # no stop ids: every row decodes every step
        start = time.perf_counter()
        out = engine.run(prompts, list(range(len(prompts))))
        sync(device)
        total = time.perf_counter() - start
    return {"total_s": total, "prefill_s": prefill, "tokens": sum(len(ids) for ids, _ in out), "forwards": engine.forwards}


def time_hf(model, prompts, settings, device) -> dict:
    from srl.training.encoding import collate_left

    batch = {k: v.to(device) for k, v in collate_left(prompts, 0).items()}
    kw = dict(do_sample=settings.temperature > 0, pad_token_id=0, eos_token_id=None)
    if settings.temperature > 0:
        kw.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        model.generate(**batch, max_new_tokens=1, **kw)
        sync(device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        ids = model.generate(**batch, max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.max_new_tokens, **kw)
        sync(device)
        total = time.perf_counter() - start
    return {"total_s": total, "prefill_s": prefill, "tokens": int((ids.shape[1] - batch["input_ids"].shape[1]) * ids.shape[0])}


def decode_figures(t: dict, batch: int, steps: int, step_bytes: float, kv_bytes: float, bw: float | None) -> dict:
    """Decode rates with the prefill (timed alone) subtracted; roofline fractions against ``bw`` (GB/s)."""
    decode_s = max(t["total_s"] - t["prefill_s"], 1e-9)
    steps_per_s = (steps - 1) / decode_s  # the first new token comes from the prefill's logits
    t.update(tokens_per_s=t["tokens"] / t["total_s"], decode_tokens_per_s=batch * steps_per_s, decode_steps_per_s=steps_per_s)
    if bw:
        t["roofline_fraction"] = step_bytes * steps_per_s / (bw * 1e9)
        t["roofline_fraction_with_kv"] = (step_bytes + kv_bytes) * steps_per_s / (bw * 1e9)
    return t


def section_generation(plan: dict, device: torch.device, rates: dict) -> dict:
    from srl.generation.kv_cache import kv_bytes_per_token
    from srl.generation.sampling import SamplingSettings

    model = CACHE.get("big") or build_llama(plan["big"], device, torch.bfloat16)
    CACHE["big"] = model
    model.eval()
    head = model.get_output_embeddings().weight
    scale = 4.0  # random init gives near-uniform next-token distributions (logit std ~1.3); x4 peaks them like a trained model's
    with torch.no_grad():
        head.mul_(scale)
    try:
        step_bytes = float(sum(p.numel() * p.element_size() for p in model.parameters()) - model.get_input_embeddings().weight.numel() * 2)
        bw, new, out = rates.get("copy_gbs"), plan["new_tokens"], {"runs": []}
        out.update(weight_bytes_per_step=step_bytes, kv_bytes_per_token=kv_bytes_per_token(model), shape="llama3_8b" if plan is FULL else "tiny")
        cases = [(b, 0.0) for b in plan["gen_batches"]] + [(plan["sampled_batch"], 0.7)]
        for batch, temperature in cases:
            prompts = random_prompts(batch, plan["prompt_len"], model.config.vocab_size, seed=batch)
            settings = SamplingSettings(temperature=temperature, top_p=0.9, max_new_tokens=new, batch_size=batch)
            context = sum(map(len, prompts)) / batch + new / 2
            kv = batch * context * kv_bytes_per_token(model)
            mode = "greedy" if temperature == 0 else "T0.7 p0.9"
            res = {"batch": batch, "mode": mode}
            for side, fn in (("engine", time_engine), ("hf_generate", time_hf)):
                try:
                    res[side] = decode_figures(fn(model, prompts, settings, device), batch, new, step_bytes, kv, bw)
                except Exception as exc:  # one side failing (OOM at 256) still leaves the other
                    res[side] = {"error": error_record(exc)}
            e, h = res["engine"], res["hf_generate"]
            if "decode_tokens_per_s" in e and "decode_tokens_per_s" in h:
                res["engine_over_hf_decode"] = e["decode_tokens_per_s"] / h["decode_tokens_per_s"]
                res["engine_over_hf_end_to_end"] = e["tokens_per_s"] / h["tokens_per_s"]
                target = ">=1.5x HF, >=40% roofline" if batch == 64 and temperature == 0 and plan is FULL else ""
                row("generation", f"batch {batch} {mode}: engine / HF decode tok/s",
                    f"{e['decode_tokens_per_s']:.0f} / {h['decode_tokens_per_s']:.0f} = {res['engine_over_hf_decode']:.2f}x", target)
                if bw:
                    row("generation", f"batch {batch} {mode}: roofline engine / HF",
                        f"{100 * e['roofline_fraction']:.1f}% / {100 * h['roofline_fraction']:.1f}%")
            out["runs"].append(res)
    finally:
        with torch.no_grad():
            head.div_(scale)
        model.train()
    return out


# ---------------------------------------------------------------- training
@contextlib.contextmanager
def capture_rewards():
    """The rewards of the first DPO training step: wraps the loss ``DPOModule.training_step`` looks up
    in ``srl.training.dpo`` at call time (as ``experiments/bench_dpo.py`` does)."""
    import srl.training.dpo as dpo

    seen: list[Any] = []
    original = dpo.batch_preference_loss

    def recording(model, batch, settings):
        out = original(model, batch, settings)
        if not seen:  # (rewards of chosen rows then rejected rows, the batch's stored reference log-probs or None)
            refs = (batch["ref_chosen"], batch["ref_rejected"]) if "ref_chosen" in batch else None
            seen.append((torch.cat([out.chosen_rewards, out.rejected_rewards]).detach().float().cpu(),
                         None if refs is None else torch.cat(refs).detach().float().cpu()))
        return out

    dpo.batch_preference_loss = recording
    try:
        yield seen
    finally:
        dpo.batch_preference_loss = original


def make_items(kind: str, n: int, seq: int, vocab: int, seed: int) -> list:
    """Random sequences of exactly ``seq`` tokens (no padding): a 16-token prompt, the rest is the reply."""
    from srl.training.dpo import EncodedPair
    from srl.training.encoding import IGNORE_INDEX, EncodedExample

    g = torch.Generator().manual_seed(seed)
    prompt = min(16, seq // 4)

    def example(ids: list[int]) -> EncodedExample:
        return EncodedExample(tuple(ids), tuple([IGNORE_INDEX] * prompt + ids[prompt:]))

    def ids() -> list[int]:
        return torch.randint(3, vocab, (seq,), generator=g).tolist()

    if kind == "sft":
        return [example(ids()) for _ in range(n)]
    out = []
    for _ in range(n):
        chosen, rejected = ids(), ids()
        rejected[:prompt] = chosen[:prompt]
        out.append(EncodedPair(example(chosen), example(rejected), None, None))
    return out


def train_run(name: str, model, kind: str, micro: int, seq: int, steps: int, trainer_kw: dict, tmp: Path, device: torch.device,
              lora: bool, checkpointing: bool = False, rates: dict | None = None, expected: dict | None = None) -> dict:
    """``steps`` timed optimizer steps (plus one warm-up) of srl's SFT or DPO module, one micro-batch a step."""
    import lightning as L

    from srl.core import rundir
    from srl.training import strategies
    from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, reference_logprobs
    from srl.training.encoding import collate_right
    from srl.training.sft import SFTDataModule, SFTModule, SFTSettings, set_dropout
    from srl.training.steps import StageProgress

    total_steps = steps + 1
    items = make_items(kind, micro * total_steps, seq, model.config.vocab_size, seed=len(name))
    set_dropout(model, 0.0)  # step-0 rewards then measure precision alone (conf/dpo/default also trains with 0)
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-4 if lora else 1e-5, weight_decay=0.0)
    common = dict(optimizer=optimizer, scheduler=None, batch_size=micro, micro_batch_size=micro, max_length=seq, dropout=0.0,
                  seed=0, group_by_length=False, gradient_checkpointing=checkpointing)
    out: dict[str, Any] = {"kind": kind, "lora": lora, "micro_batch": micro, "seq": seq, "gradient_checkpointing": checkpointing,
                           "precision": trainer_kw.get("precision")}
    peak_reset(device)
    if kind == "dpo" and not lora:  # srl's path (stages/iteration.py): reference log-probs before training, under the training autocast
        sync(device)
        start = time.perf_counter()
        items = reference_logprobs(model, items, 0, micro, precision=trainer_kw.get("precision"))
        sync(device)
        out["ref_precompute_s"] = time.perf_counter() - start
        under = reference_logprobs(model, items, 0, micro)  # without it (srl before the fix): float32 outside autocast
        out["ref_autocast_delta_max"] = max(max(abs(a.ref_chosen - b.ref_chosen), abs(a.ref_rejected - b.ref_rejected)) for a, b in zip(items, under))
    if kind == "sft":
        module: L.LightningModule = SFTModule(model, SFTSettings(**common), metric_prefix=f"gpu_check/{name}")
        collate = collate_right
    else:
        module = DPOModule(model, DPOSettings(beta=0.1, ref_batch_size=micro, **common), metric_prefix=f"gpu_check/{name}")
        collate = collate_pairs
    data = SFTDataModule(items, [], micro, 0, 0, collate=collate, group_by_length=False)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync(device)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync(device)  # forward + backward + clip + AdamW step + srl's per-step statistics (StageProgress)
            self.times.append(time.perf_counter() - self.t0)
            self.tokens.append(int(batch["attention_mask"].sum()))

    clock = Clock()
    folder = tmp / name
    with rundir.working_in(tmp), capture_rewards() as rewards:
        progress = StageProgress(folder, f"gpu_check/{name}", every_n_steps=0)
        trainer = strategies.trainer(**{
            **trainer_kw, "max_steps": total_steps, "max_epochs": 1, "accumulate_grad_batches": 1, "logger": False,
            "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False, "callbacks": [progress, clock],
            "limit_val_batches": 0, "use_distributed_sampler": False, "default_root_dir": str(folder),
        })
        trainer.fit(module, datamodule=data)
    out["peak_gb"] = peak_gb(device)
    out["step_s"] = clock.times
    timed, tokens = clock.times[1:] or clock.times, clock.tokens[1:] or clock.tokens
    out["mean_step_s"] = sum(timed) / len(timed)
    out["tokens_per_step"] = sum(tokens) / len(tokens)
    out["tokens_per_s"] = out["tokens_per_step"] / out["mean_step_s"]
    out["loss"] = [r.get("loss") for r in progress.rows]
    if rewards:
        step0, refs = rewards[0]
        out["step0_max_abs_reward"] = float(step0.abs().max())
        if refs is not None and "ref_autocast_delta_max" in out:  # the same step, the reference taken under the training autocast
            out["step0_max_abs_reward_ref_fp32"] = step0_with_autocast_ref(step0, refs, items, under, 0.1)
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad) if lora else 0
    n_mm = matmul_params(model.get_base_model()) - lora_params if lora else matmul_params(model)
    if lora:  # frozen base: forward 2N + input gradients 2N (no weight gradients); the adapter 6 N_lora; DPO's reference forward +2N
        per_token, formula = 4 * n_mm + 6 * lora_params + (2 * n_mm if kind == "dpo" else 0), "(4N + 6N_lora" + (" + 2N ref)" if kind == "dpo" else ")")
    else:
        per_token, formula = 6 * n_mm, "6N"
    out.update(matmul_params=n_mm, lora_params=lora_params, flops_per_token=per_token, mfu_formula=formula + " x tokens/s / bf16 matmul rate; recompute and attention not counted")
    peak = (rates or {}).get("matmul_tflops_bfloat16")
    if peak:
        out["mfu"] = per_token * out["tokens_per_s"] / (peak * 1e12)
    if expected is not None:
        out["expected_gb"] = expected
    for p in model.parameters():
        p.grad = None
    del trainer, module, data
    free(device)
    return out


def step0_with_autocast_ref(rewards: torch.Tensor, refs: torch.Tensor, srl_items: list, autocast_items: list, beta: float) -> float:
    """Step-0 rewards had the reference been computed under the training autocast: beta x (policy - ref')
    = reward + beta x (ref - ref'), row for row. ``refs``: the batch's stored reference log-probs (float32,
    chosen rows then rejected rows), matched to their pairs by value (the data module shuffles)."""
    key = lambda v: torch.tensor(v, dtype=torch.float32).item()  # noqa: E731 - as collate_pairs stores them
    n = rewards.numel() // 2
    lookup = [{key(a.ref_chosen): b.ref_chosen for a, b in zip(srl_items, autocast_items)},
              {key(a.ref_rejected): b.ref_rejected for a, b in zip(srl_items, autocast_items)}]
    shifted = [float(r) + beta * (float(ref) - lookup[i // n][float(ref)]) for i, (r, ref) in enumerate(zip(rewards, refs))]
    return max(abs(x) for x in shifted)


def expected_memory(model, kind: str, rows: int, seq: int, lora: bool, checkpointing: bool) -> dict:
    """GB by the arithmetic of ``conf/experiment/qlora_7b.yaml`` / ``paper_8gpu.yaml`` applied to this shape."""
    cfg = model.config
    total = sum(p.numel() for p in model.parameters())
    tokens = rows * seq
    terms: dict[str, float] = {}
    if lora:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        terms["base_bf16"] = (total - trainable) * 2 / 1e9
        terms["lora_fp32_weight_grad_adamw"] = trainable * 16 / 1e9
    else:
        terms["fp32_weight_grad_adamw"] = total * 16 / 1e9
    terms["head_on_targets_fp32"] = tokens * cfg.vocab_size * 4 / 1e9
    if checkpointing:
        terms["checkpointed_layer_inputs"] = cfg.num_hidden_layers * tokens * cfg.hidden_size * 2 / 1e9
        terms["one_layer_recomputed"] = 2 * terms["checkpointed_layer_inputs"]  # as the files: ~1 GB beside 0.5 GB kept (qlora_7b)
    else:
        terms["activations"] = float("nan")  # the files checkpoint every layer; without it they give no figure
    finite = [v for v in terms.values() if not math.isnan(v)]
    return {"terms": terms, "total_gb": sum(finite), "covers_activations": checkpointing, "rows": rows, "seq": seq}


def section_training(plan: dict, device: torch.device, trainer_kw: dict, rates: dict, tmp: Path) -> dict:
    from srl.training.adapters import PeftSettings, attach_lora

    out: dict[str, Any] = {}
    errors = []
    seq, steps = plan["seq"], plan["timed_steps"]

    def run(name: str, model, kind: str, micro: int, lora: bool) -> None:
        rows = micro * (2 if kind == "dpo" else 1)  # DPO: chosen and rejected rows in one forward
        try:
            out[name] = train_run(name, model, kind, micro, seq, steps, trainer_kw, tmp, device, lora, checkpointing=lora, rates=rates,
                                  expected=expected_memory(model, kind, rows, seq, lora, lora))
        except Exception as exc:
            out[name] = {"error": error_record(exc)}
            errors.append(name)
        free(device)

    # ~1B, full fine-tuning: fp32 master weights, bf16-mixed compute (the trainer's precision).
    small = build_llama(plan["small"], device, torch.float32)
    run("sft_1b_full", small, "sft", plan["sft_micro"], False)
    run("dpo_1b_full", small, "dpo", plan["dpo_micro"], False)
    del small
    free(device)
    # The 8B shape, bf16 base + LoRA with conf/peft/qlora's adapter (r, alpha, dropout); gradient
    # checkpointing on, as experiment/qlora_7b sets it.
    big = CACHE.pop("big", None) or build_llama(plan["big"], device, torch.bfloat16)
    qlora = load_yaml(ROOT / "conf" / "peft" / "qlora.yaml")
    peft = PeftSettings(method="lora", r=int(qlora.get("r", 64)), alpha=int(qlora.get("alpha", 16)), dropout=float(qlora.get("dropout", 0.1)),
                        target_modules="all-linear", compute_dtype="bfloat16")
    lora = attach_lora(big, peft)
    out["lora_settings"] = {"r": peft.r, "alpha": peft.alpha, "dropout": peft.dropout, "target_modules": peft.target_modules}
    # DPO first: a fresh adapter (B = 0) makes the policy equal the adapter-off reference at step 0.
    run("dpo_8b_lora", lora, "dpo", plan["lora_micro"], True)
    run("sft_8b_lora", lora, "sft", plan["lora_micro"], True)
    del lora, big
    free(device)
    for name in ("sft_1b_full", "dpo_1b_full", "sft_8b_lora", "dpo_8b_lora"):
        r = out.get(name, {})
        if "error" in r:
            row("training", name, f"error: {r['error']['type']}")
            continue
        mfu = f", MFU {100 * r['mfu']:.1f}% {r['mfu_formula'].split(' x')[0]}" if "mfu" in r else ""
        row("training", f"{name} {r['micro_batch']}x{r['seq']}", f"{r['mean_step_s']:.3f} s/step, {r['tokens_per_s']:.0f} tok/s{mfu}",
            "MFU >= 35%" if "1b" in name and plan is FULL else "")
        if r.get("peak_gb") is not None:
            exp = r["expected_gb"]
            row("training", f"{name} peak memory", f"{r['peak_gb']:.1f} GB (files' arithmetic {exp['total_gb']:.1f} GB"
                + ("" if exp["covers_activations"] else " + activations, not estimated") + ")", "< 80 GB" if "8b" in name else "")
        if "step0_max_abs_reward" in r:
            row("training", f"{name} step-0 max|reward|", f"{r['step0_max_abs_reward']:.2e}", "~0")
    if errors:
        raise SectionError(f"training runs failed: {errors}", out)
    return out


# ---------------------------------------------------------------- fsdp
def section_fsdp(plan: dict, device: torch.device, trainer_kw: dict, fsdp_kw: dict, tmp: Path) -> dict:
    from transformers import AutoModelForCausalLM

    from srl.core import rundir
    from srl.training import strategies
    from srl.training.adapters import PeftSettings, save_trained
    from srl.training.sft import SFTDataModule, SFTModule, SFTSettings
    from srl.training.tiny import train_tiny_tokenizer

    kw = dict(fsdp_kw, devices=1)
    if device.type != "cuda":
        try:  # Lightning decides; record its own words
            strategies.trainer(**dict(kw, accelerator="cpu", max_steps=1, logger=False))
        except Exception as exc:
            return {"skipped": f"{type(exc).__name__}: {exc}"}
        return {"skipped": "no CUDA device"}

    class WithForward(SFTModule):
        """SFTModule (srl's training step) with a forward, so the FSDP root can be called for logits."""

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    model = build_llama(plan["fsdp"], torch.device("cpu"), torch.float32, seed=1)  # FSDP shards from host memory, as srl's stages do
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("layers.0.self_attn.q_proj.weight")}
    micro, seq = 4, plan["fsdp_seq"]
    items = make_items("sft", micro, seq, model.config.vocab_size, seed=7)
    settings = SFTSettings(optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), scheduler=None, batch_size=micro, micro_batch_size=micro,
                           max_length=seq, dropout=0.0)
    module = WithForward(model, settings, metric_prefix="gpu_check/fsdp")
    out: dict[str, Any] = {"strategy": kw.get("strategy"), "precision": kw.get("precision")}
    with rundir.working_in(tmp):
        trainer = strategies.trainer(**{**kw, "max_steps": 1, "max_epochs": 1, "logger": False, "enable_checkpointing": False,
                                        "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                                        "use_distributed_sampler": False, "default_root_dir": str(tmp / "fsdp")})
        trainer.fit(module, datamodule=SFTDataModule(items, [], micro, 0, 0))
        out["strategy_class"] = type(trainer.strategy).__name__
        state = strategies.full_state_dict(trainer)  # srl's gather (collective; every rank calls it)
        ids = torch.randint(3, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
        mask = torch.ones_like(ids)
        fsdp_logits, fsdp_error = None, None
        try:  # the trained model as FSDP holds it, through the root's forward (parameters unsharded by FSDP itself)
            root = trainer.strategy.model
            root.eval()
            with torch.no_grad():
                fsdp_logits = root(ids.to(trainer.strategy.root_device), mask.to(trainer.strategy.root_device)).float().cpu()
        except Exception as exc:
            fsdp_error = error_record(exc)
        fresh = build_llama(plan["fsdp"], torch.device("cpu"), torch.float32, seed=2)  # RunModels.save: a fresh copy takes the state
        fresh.load_state_dict({k: v.cpu() for k, v in state.items()})
        folder = tmp / "fsdp" / "model"
        save_trained(fresh, train_tiny_tokenizer(), None, PeftSettings(), folder)
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    fresh.eval()
    with torch.no_grad():
        reloaded = loaded(input_ids=ids, attention_mask=mask).logits.float()
        gathered = fresh(input_ids=ids, attention_mask=mask).logits.float()
    key = next(iter(before))
    out.update(
        keys=len(state), changed_by_step=bool((state[key].cpu() != before[key]).any()),
        gathered_vs_reloaded_max_abs=float((gathered - reloaded).abs().max()),
        fsdp_forward_vs_reloaded_max_abs=None if fsdp_logits is None else float((fsdp_logits - reloaded).abs().max()),
        fsdp_forward_error=fsdp_error,
        logit_scale=float(reloaded.abs().max()), folder_files=sorted(p.name for p in folder.iterdir()),
    )
    row("fsdp", "gathered state -> save -> from_pretrained, logits max|diff|", f"{out['gathered_vs_reloaded_max_abs']:.2e}", "0")
    diff = out["fsdp_forward_vs_reloaded_max_abs"]
    row("fsdp", "FSDP module forward vs reloaded folder, max|diff|", "error" if diff is None else f"{diff:.2e}", "~0 (fp32)")
    del trainer, module, model, fresh, loaded
    free(device)
    return out


# ---------------------------------------------------------------- the whole loop
RECORDER = r"""
import atexit, json, os, runpy, sys
import srl.generation.engine as E, srl.training.sft as S, srl.training.dpo as D
seen = {"engine": [], "fit": [], "reference_logprobs": []}
def dev(model):
    p = next(model.parameters()); return {"device": str(p.device), "dtype": str(p.dtype)}
init = E.Engine.__init__
def engine_init(self, model, *a, **k):
    init(self, model, *a, **k); seen["engine"].append(dev(model))
E.Engine.__init__ = engine_init
for cls, name in ((S.SFTModule, "sft"), (D.DPOModule, "dpo")):
    def fit_start(self, _orig=cls.on_fit_start, _name=name):
        _orig(self); seen["fit"].append(dict(dev(self.model), module=_name, precision=str(self.trainer.precision)))
    cls.on_fit_start = fit_start
try:  # the pairs stage imports reference_logprobs by name: wrap it where it is looked up
    import srl.pipeline.stages.iteration as I
    ref = I.reference_logprobs
    def reference(model, *a, **k):
        seen["reference_logprobs"].append(dev(model)); return ref(model, *a, **k)
    I.reference_logprobs = reference
except (ImportError, AttributeError) as exc:
    seen["reference_logprobs_unwrapped"] = repr(exc)
atexit.register(lambda: open(os.environ["SRL_GPU_CHECK_DEVICES"], "w").write(json.dumps(seen)))
sys.argv = ["srl.run", *sys.argv[1:]]
runpy.run_module("srl.run", run_name="__main__", alter_sys=True)
"""


def section_loop(plan: dict, device: torch.device, tmp: Path, timeout: float) -> dict:
    run_dir, record = tmp / "smoke", tmp / "devices.json"
    overrides = ["+experiment=smoke", "logger=none", f"hydra.run.dir={run_dir}"]
    overrides += ["trainer=gpu"] if device.type == "cuda" else ["trainer=cpu", *TINY_LOOP]
    env = dict(os.environ, SRL_GPU_CHECK_DEVICES=str(record), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RECORDER, *overrides], env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)
    out: dict[str, Any] = {"command": "python -m srl.run " + shlex.join(overrides), "returncode": proc.returncode,
                           "seconds": time.perf_counter() - start}
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    manifest = json.loads((run_dir / "manifest.json").read_text()) if (run_dir / "manifest.json").is_file() else {}
    seen = json.loads(record.read_text()) if record.is_file() else {}
    devices = sorted({r["device"] for k in ("engine", "fit", "reference_logprobs") for r in seen.get(k, [])})
    expect = "cuda" if device.type == "cuda" else "cpu"
    out.update(status=summary.get("status"), stages=sorted(manifest.get("stages", {})), devices=devices,
               engine_calls=len(seen.get("engine", [])), fits=seen.get("fit", []), reference_calls=len(seen.get("reference_logprobs", [])),
               all_on_expected_device=bool(devices) and all(d.startswith(expect) for d in devices), expected_device=expect)
    row("loop", "smoke run status, stages", f"{out['status']}, {len(out['stages'])} stages, {out['seconds']:.0f} s", "ok")
    row("loop", "model devices (engine calls, fits, reference)", f"{devices} ({out['engine_calls']}, {len(out['fits'])}, {out['reference_calls']})",
        f"all {expect}")
    if proc.returncode != 0 or out["status"] != "ok" or not out["all_on_expected_device"]:
        out["stderr_tail"] = proc.stderr[-3000:]
        raise SectionError(f"smoke run: rc {proc.returncode}, status {out['status']!r}, devices {devices}", out)
    return out


# ---------------------------------------------------------------- driver
class SectionError(RuntimeError):
    """A section that finished with a failed check: keeps the figures it has."""

    def __init__(self, message: str, partial: dict) -> None:
        super().__init__(message)
        self.partial = partial


def error_record(exc: BaseException) -> dict:
    return {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": traceback.format_exc().splitlines()[-15:]}


def load_yaml(path: Path) -> dict:
    import yaml  # PyYAML: on the GPU machine already; hydra's wheels need it too

    return yaml.safe_load(path.read_text()) or {}


def trainer_conf(name: str) -> dict:
    """``conf/trainer/<name>.yaml`` with its defaults chain, the Trainer keyword arguments Hydra would build."""
    spec = load_yaml(ROOT / "conf" / "trainer" / f"{name}.yaml")
    out: dict[str, Any] = {}
    for dep in spec.pop("defaults", None) or []:
        if isinstance(dep, str) and dep != "_self_":
            out.update(trainer_conf(dep))
    out.update({k: v for k, v in spec.items() if not k.startswith("_")})
    return out


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples lists, unknown objects strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def print_table(rows: list[dict]) -> None:
    rows = [dict(r, value=str(r["value"])[:90]) for r in rows]  # the JSON keeps the whole text
    widths = [max(len(str(r[k])) for r in rows + [{"section": "section", "item": "item", "value": "value", "target": "target"}])
              for k in ("section", "item", "value")]
    print(f"\n{'section':<{widths[0]}}  {'item':<{widths[1]}}  {'value':<{widths[2]}}  target")
    for r in rows:
        print(f"{r['section']:<{widths[0]}}  {r['item']:<{widths[1]}}  {str(r['value']):<{widths[2]}}  {r['target']}")



SECTIONS = ("rates", "exactness", "generation", "training", "fsdp", "loop")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (the default-tier test)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="sections that would start after this many seconds are skipped")
    args = parser.parse_args(argv)
    out_path = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else Path("gpu_check.json"))
    ROWS.clear()
    CACHE.clear()
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    plan = TINY if args.tiny else FULL
    trainer_kw = trainer_conf("gpu") if cuda else dict(trainer_conf("cpu"), precision="bf16-mixed")  # bf16-mixed on both
    fsdp_kw = trainer_conf("fsdp")
    started = time.perf_counter()
    results: dict[str, Any] = {"command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["gpu_check.py", *argv]),
                               "machine": machine(), "tiny": args.tiny, "device": str(device), "trainer": trainer_kw, "sections": {}}
    rates: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp_name:
        tmp = Path(tmp_name)
        runners: dict[str, Callable[[], dict]] = {
            "rates": lambda: section_rates(plan, device),
            "exactness": lambda: section_exactness(plan, device, trainer_kw, tmp / "exactness"),
            "generation": lambda: section_generation(plan, device, rates),
            "training": lambda: section_training(plan, device, trainer_kw, rates, tmp / "training"),
            "fsdp": lambda: section_fsdp(plan, device, trainer_kw, fsdp_kw, tmp / "fsdp_run"),
            "loop": lambda: section_loop(plan, device, tmp / "loop", min(plan["loop_timeout"], max(60.0, args.budget_s - (time.perf_counter() - started)))),
        }
        for name in SECTIONS:
            if name not in wanted:
                continue
            begun = time.perf_counter()
            if begun - started > args.budget_s:
                results["sections"][name] = {"status": "skipped", "reason": f"time budget {args.budget_s:.0f} s spent"}
                continue
            (tmp / name).mkdir(parents=True, exist_ok=True)
            try:
                value = runners[name]()
                status = "skipped" if "skipped" in value else "ok"
                record = {"status": status, **value}
            except SectionError as exc:
                record = {"status": "error", "error": error_record(exc), **exc.partial}
            except Exception as exc:  # one section's failure must not stop the others
                record = {"status": "error", "error": error_record(exc)}
            record["seconds"] = time.perf_counter() - begun
            results["sections"][name] = record
            if name == "rates" and record["status"] == "ok":
                rates = {k: v for k, v in record.items() if k not in ("status", "seconds")}
            if record["status"] != "ok":
                row(name, "status", record["status"] + (f": {record['error']['type']}: {record['error']['message'][:80]}" if "error" in record
                                                        else f": {record.get('skipped', record.get('reason', ''))[:100]}"))
            if name == "training" or (name == "generation" and "training" not in wanted):
                CACHE.pop("big", None)  # the 8B-shape model is kept from generation for LoRA training only
            free(device)
            print(f"[gpu_check] {name}: {record['status']} in {record['seconds']:.1f} s", file=sys.stderr, flush=True)
    results["total_seconds"] = time.perf_counter() - started
    results["table"] = list(ROWS)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in results["machine"].items() if v is not None))
    print_table(ROWS + [{"section": "total", "item": "wall time", "value": f"{results['total_seconds']:.1f} s", "target": "< 480 s" if not args.tiny else ""}])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(clean(results), indent=2, allow_nan=False))
    print(f"\nwrote {out_path}")
    return results


if __name__ == "__main__":
    main()
