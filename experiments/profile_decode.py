"""Where a decode step's time goes: torch.profiler over the engine's decode steps at batch 16 and 64.

Judge-like prompts (the additive rubric, a prompt, a ~100-token reply: ~485 tokens, a ~380-token
shared prefix) are prefilled into one running batch outside the profiler; then ``--steps`` decode
steps (sampling + forward, as ``Engine.run`` does them) are timed without the profiler and profiled
separately, and the profiled operators are grouped. Configurations: the engine before this round
(float32, cache concatenated every step, prefix copied into every row), then each change added in turn
(cache appended in place, prefix attended in place, bfloat16 weights, linear layers packed).

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
from srl.generation.sampling import SamplingSettings, sample_next

CONFIGS = {
    "before: float32, concatenating cache, prefix copied per row": ("float32", EngineOptions(reserve_cache=False, shared_attention=False)),
    "+ cache appended in place": ("float32", EngineOptions(shared_attention=False)),
    "+ prefix attended in place (cache buffers read whole)": ("float32", EngineOptions()),
    "+ bfloat16 weights": ("bfloat16", EngineOptions()),
    "+ linear layers packed (srl's generation copy)": ("bfloat16 packed", EngineOptions()),
}
GROUPS = {"matmul (linear layers, output head)": ("aten::mm", "aten::addmm", "mkldnn::_linear_pointwise"),
          "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::bmm", "aten::_softmax", "aten::masked_fill"),
          "cache copies": ("aten::cat", "aten::copy_", "aten::index_select", "aten::index"),
          "sampling": ("aten::topk", "aten::sort", "aten::multinomial", "aten::exp", "aten::cumsum")}


def decode_steps(model, tok, prompts, options, steps) -> tuple[dict[str, float], float]:
    """(profiled self time per operator, ms per step; wall ms per step without the profiler) of ``steps``
    decode steps of one running batch holding every prompt."""
    settings = SamplingSettings(0.7, 0.9, 4 * steps + 8, batch_size=len(prompts))
    engine = Engine(model, settings, tok.pad_token_id, [], options)
    with torch.no_grad():
        rows = engine._admit(None, engine._setup(prompts), list(range(len(prompts))))  # the prefill, not measured

        def step() -> None:
            nxt = sample_next(rows.logits.float().cpu(), settings, rows.generators)
            rows.position = rows.position + 1
            rows.attention = torch.cat([rows.attention, rows.attention.new_ones(len(rows.items), 1)], dim=1)
            rows.cache, rows.logits = engine._forward(nxt.to(engine.device)[:, None], rows.attention, rows.position[:, None], rows.cache)

        for _ in range(2):
            step()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) * 1e3 / steps
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    return {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batches", default="16,64")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from common import load_model, machine

    from srl.generation.weights import to_generation_format
    from srl.judging.templates import load_judge_template
    from srl.models.chat import render_prompt

    model, tok = load_model(args.model)
    model.eval()
    packed = copy.deepcopy(model)
    to_generation_format(packed, "bfloat16")
    models = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16), "bfloat16 packed": packed}
    template = load_judge_template()
    figures: dict = {"machine": machine(), "model": args.model, "steps": args.steps, "rows": []}
    for batch in map(int, args.batches.split(",")):
        prompts = [tok(render_prompt(tok, template.render(f"Write a long story about the number {i}.", "Once upon a time " * 40)),
                       add_special_tokens=False)["input_ids"] for i in range(batch)]
        for name, (dtype, options) in CONFIGS.items():
            per_step, wall = decode_steps(models[dtype], tok, prompts, options, args.steps)
            total = sum(per_step.values())
            row = {"batch": batch, "config": name, "wall_ms_per_step": wall, "profiled_ms_per_step": total,
                   "groups": {g: sum(per_step.get(op, 0.0) for op in ops) for g, ops in GROUPS.items()}}
            row["groups"]["other (elementwise, norms, rotary, masks, Python)"] = total - sum(row["groups"].values())
            row["top_ops"] = sorted(((k, v) for k, v in per_step.items()), key=lambda kv: -kv[1])[:6]
            figures["rows"].append(row)
            print(f"\nbatch {batch}, {name}: {wall:.1f} ms per decode step (wall, no profiler), {total:.1f} ms profiled")
            for g, v in row["groups"].items():
                print(f"  {g:<52}{v:>8.1f} ms  {100 * v / total:>5.1f}%")
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
