"""Where a decode step's time goes: torch.profiler over the engine's decode steps at batch 16 and 64.

Judge-like prompts (the additive rubric, a prompt, a ~100-token reply: ~485 tokens, a ~380-token
shared prefix) decode ``--steps`` tokens per row with no stop ids. Each configuration is profiled
twice, with ``max_new_tokens=1`` (prefills only) and with ``--steps``; the difference per operator is
the decode steps' share, printed as ms per step with the wall time per step. Configurations: the engine
before this round (float32, cache concatenated every step, prefix copied into every row), then each
change added in turn (cache appended in place, prefix attended in place, bfloat16 weights).

    HF_HUB_OFFLINE=1 python experiments/profile_decode.py
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from srl.generation.engine import Engine, EngineOptions
from srl.generation.sampling import SamplingSettings

CONFIGS = {
    "before: float32, concatenating cache, prefix copied per row": ("float32", EngineOptions(reserve_cache=False, shared_attention=False)),
    "+ cache appended in place": ("float32", EngineOptions(shared_attention=False)),
    "+ prefix attended in place": ("float32", EngineOptions()),
    "+ bfloat16 weights": ("bfloat16", EngineOptions()),
}
GROUPS = {"matmul (linear layers, output head)": ("aten::mm", "aten::addmm"),
          "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax", "aten::masked_fill"),
          "cache copies": ("aten::cat", "aten::copy_", "aten::index_select", "aten::index"),
          "sampling": ("aten::topk", "aten::sort", "aten::multinomial", "aten::exp", "aten::cumsum")}


def op_times(model, tok, prompts, options, steps) -> tuple[dict[str, float], float]:
    settings = SamplingSettings(0.7, 0.9, steps, batch_size=len(prompts))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        Engine(model, settings, tok.pad_token_id, [], options).run(prompts, list(range(len(prompts))))
        wall = time.perf_counter() - start
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}, wall * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=33)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from common import load_model, machine

    from srl.judging.templates import load_judge_template
    from srl.models.chat import render_prompt

    model, tok = load_model(args.model)
    model.eval()
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    template = load_judge_template()
    figures: dict = {"machine": machine(), "model": args.model, "steps": args.steps, "rows": []}
    for batch in map(int, args.batches.split(",")):
        prompts = [tok(render_prompt(tok, template.render(f"Write a long story about the number {i}.", "Once upon a time " * 40)),
                       add_special_tokens=False)["input_ids"] for i in range(batch)]
        for name, (dtype, options) in CONFIGS.items():
            m = models[dtype]
            op_times(m, tok, prompts, options, 2)  # warm-up
            prefill, prefill_wall = op_times(m, tok, prompts, options, 1)
            full, full_wall = op_times(m, tok, prompts, options, args.steps)
            per_step = {k: (full[k] - prefill.get(k, 0.0)) / (args.steps - 1) for k in full}
            total = sum(per_step.values())
            row = {"batch": batch, "config": name, "wall_ms_per_step": (full_wall - prefill_wall) / (args.steps - 1), "profiled_ms_per_step": total,
                   "groups": {g: sum(per_step.get(op, 0.0) for op in ops) for g, ops in GROUPS.items()}}
            row["groups"]["other (elementwise, norms, rotary, masks, Python)"] = total - sum(row["groups"].values())
            row["top_ops"] = sorted(((k, v) for k, v in per_step.items()), key=lambda kv: -kv[1])[:6]
            figures["rows"].append(row)
            print(f"\nbatch {batch}, {name}: {row['wall_ms_per_step']:.1f} ms per decode step (wall), {total:.1f} ms profiled")
            for g, v in row["groups"].items():
                print(f"  {g:<52}{v:>8.1f} ms  {100 * v / total:>5.1f}%")
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
