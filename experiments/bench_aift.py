"""Benchmark: the AIFT stage (N replies per prompt, then K judge samples per reply), srl's engine against
the baselines a user would otherwise write, all measured in this one run.

Every side uses the same model, prompts, sampling (T, top-p, no top-k), max new tokens and stop tokens,
and produces the same records (N candidates per prompt, K judge samples per candidate):

* ``per_prompt``: what public re-implementations do: one ``model.generate(num_return_sequences=N)`` per
  prompt, then one ``generate(num_return_sequences=K)`` per reply's judge prompt (float32);
* ``batched``: one ``generate`` call per stage over every prompt (left padding, ``num_return_sequences``),
  in float32 and in bfloat16 (anyone can cast a model; the fair baseline gets the same weights format);
* ``continuous``: transformers' continuous batching (``model.generate_batch``: paged cache, its own
  scheduler), each prompt repeated for its samples (``continuous:float32`` adds the float32 run);
* ``srl_float32`` / ``srl``: the loop's own stage functions (``generate_candidates``, ``judge_candidates``)
  on the engine (``srl/generation/engine.py``), with the model as loaded and in the generation format
  ``--weights`` gives it (``auto`` as ``conf/backend/hf.yaml``: bfloat16 on a CPU with AVX512-BF16).

It prints wall time, generated tokens, tokens/s and records per side and stage, the wall ratio of each
side to srl, and the strongest baseline. Then the machine's limits (2048x2048 matmul in float32 and
bfloat16, a 1 GiB memory copy) and the engine's pure decoding rate at batch 16 and 64 (float32 with
the old concatenating cache, float32 and bfloat16 with the cache that appends in place), with the
weight bytes read per second as a fraction of the copy bandwidth (the bandwidth roofline).

    HF_HUB_OFFLINE=1 python experiments/bench_aift.py              # SmolLM2-135M-Instruct, 8 prompts (35 min here)
    HF_HUB_OFFLINE=1 python experiments/bench_aift.py --model runs/x/m1/model --prompts 16 --sides batched:bfloat16,srl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import PROMPTS_FILE, machine, sample_prompts

from srl.generation.candidates import CandidateSettings, generate_candidates
from srl.judging.pointwise import judge_candidates
from srl.judging.settings import JudgeSettings



def generated_tokens(rows: torch.Tensor, stops: set[int]) -> list[list[int]]:
    """Rows of new ids from HF generate, cut after the first stop token (the rest is padding)."""
    out = []
    for row in rows.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        out.append(row[:cut])
    return out


def render_ids(tok, text: str) -> list[int]:
    from srl.models.chat import render_prompt

    return tok(render_prompt(tok, text), add_special_tokens=False)["input_ids"]


def sampling_kwargs(s, tok, stops) -> dict:
    """HF generate's arguments for srl's sampling settings: the same T, top-p (no top-k), limit and stop ids."""
    return dict(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0, max_new_tokens=s.max_new_tokens,
                pad_token_id=tok.pad_token_id, eos_token_id=sorted(stops))


def two_stages(gen, tok, prompts, n, k, cand, judge, template) -> tuple[dict, dict]:
    """Candidates then judging with ``gen(list of prompt texts, samples each, settings) -> rows of new ids``
    (grouped by prompt); returns each stage's seconds, generated tokens and records."""
    start = time.perf_counter()
    rows = gen(prompts, n, cand)
    replies = [(p, tok.decode(ids, skip_special_tokens=True).strip(), len(ids)) for i, p in enumerate(prompts) for ids in rows[i * n:(i + 1) * n]]
    cand_s = time.perf_counter() - start
    start = time.perf_counter()
    judged = gen([template.render(p, r) for p, r, _ in replies], k, judge)
    judge_s = time.perf_counter() - start
    return ({"seconds": cand_s, "tokens": sum(t for _, _, t in replies), "records": len(replies)},
            {"seconds": judge_s, "tokens": sum(map(len, judged)), "records": len(judged) // k})


def per_prompt_loop(model, tok, prompts, n, k, cand, judge, template, stops):
    """What public re-implementations do: one ``generate(num_return_sequences=...)`` per prompt and per reply."""
    def gen(texts, count, s):
        out = []
        for text in texts:
            ids = torch.tensor([render_ids(tok, text)])
            rows = model.generate(ids, attention_mask=torch.ones_like(ids), num_return_sequences=count, **sampling_kwargs(s, tok, stops))
            out += generated_tokens(rows[:, ids.shape[1]:], stops)
        return out

    return two_stages(gen, tok, prompts, n, k, cand, judge, template)


def batched_generate(model, tok, prompts, n, k, cand, judge, template, stops):
    """One ``generate`` call per stage over every prompt: left padding, ``num_return_sequences``."""
    def gen(texts, count, s):
        encoded = [render_ids(tok, t) for t in texts]
        width = max(map(len, encoded))
        ids = torch.full((len(encoded), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, e in enumerate(encoded):
            ids[r, width - len(e):] = torch.tensor(e)
            mask[r, width - len(e):] = 1
        rows = model.generate(ids, attention_mask=mask, num_return_sequences=count, **sampling_kwargs(s, tok, stops))
        return generated_tokens(rows[:, width:], stops)

    return two_stages(gen, tok, prompts, n, k, cand, judge, template)


def continuous_batching(model, tok, prompts, n, k, cand, judge, template, stops):
    """transformers' continuous batching (``generate_batch``, paged KV cache, its own scheduler) over every
    prompt of a stage, each prompt repeated for its samples."""
    from transformers import GenerationConfig

    def gen(texts, count, s):
        encoded = [render_ids(tok, t) for t in texts for _ in range(count)]
        config = GenerationConfig(**sampling_kwargs(s, tok, stops))
        out = model.generate_batch(encoded, generation_config=config, progress_bar=False)
        ordered = [out[key] for key in sorted(out, key=lambda key: int(key.rsplit("_", 1)[-1]))]
        if len(ordered) != len(encoded) or any(o.error for o in ordered):
            raise RuntimeError(f"generate_batch: {len(ordered)} of {len(encoded)} requests returned, errors: {[o.error for o in ordered if o.error][:3]}")
        return [generated_tokens(torch.tensor([o.generated_tokens]), stops)[0] for o in ordered]

    return two_stages(gen, tok, prompts, n, k, cand, judge, template)


def srl_stages(model, tok, prompts, cand, judge_settings, tmp: Path):
    """The loop's stage functions on the engine; generated tokens are counted at the engine's output."""
    from srl.data.partial import PartialJsonl
    from srl.data.records import Candidate, Judgement, PromptRecord, read_jsonl
    from srl.generation import engine

    counted = [0]
    run = engine.Engine.run

    def counting_run(self, prompts_ids, seeds):
        out = run(self, prompts_ids, seeds)
        counted[0] += sum(len(ids) for ids, _ in out)  # includes the stop token, as the baseline's count does
        return out

    engine.Engine.run = counting_run
    try:
        records = [PromptRecord(f"p{i}", p, "bench") for i, p in enumerate(prompts)]
        start = time.perf_counter()
        generate_candidates(model, tok, records, cand, 0, 1, store := PartialJsonl(tmp / "candidates.jsonl", Candidate))
        cand_s, cand_tokens = time.perf_counter() - start, counted[0]
        candidates = read_jsonl(store.finish(), Candidate)
        start = time.perf_counter()
        judge_candidates(model, tok, candidates, judge_settings, 0, 1, jstore := PartialJsonl(tmp / "judgements.jsonl", Judgement))
        judge_s, judge_tokens = time.perf_counter() - start, counted[0] - cand_tokens
        judgements = read_jsonl(jstore.finish(), Judgement)
    finally:
        engine.Engine.run = run
    return ({"seconds": cand_s, "tokens": cand_tokens, "records": len(candidates)},
            {"seconds": judge_s, "tokens": judge_tokens, "records": len(judgements)})


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def copy_gbps(megabytes: int = 1024, repeats: int = 5) -> float:
    """Memory bandwidth of a large copy, bytes read + bytes written per second (STREAM's copy convention)."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    return 2 * src.numel() * 4 * repeats / (time.perf_counter() - start) / 1e9


def decode_rate(model, tok, batch: int, options=None, steps: int = 48) -> float:
    """Engine tokens/s while every row decodes (prefill timed separately and subtracted)."""
    from srl.generation.engine import Engine, EngineOptions
    from srl.generation.sampling import SamplingSettings
    from srl.models.chat import render_prompt

    options = options or EngineOptions()
    ids = [tok(render_prompt(tok, f"Write a long story about the number {i}."), add_special_tokens=False)["input_ids"] for i in range(batch)]
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=steps, batch_size=batch)
    with torch.no_grad():
        Engine(model, dataclasses.replace(settings, max_new_tokens=2), tok.pad_token_id, [], options).run(ids, list(range(batch)))  # warm-up
        start = time.perf_counter()
        Engine(model, settings, tok.pad_token_id, [], options).next_token_logits(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        Engine(model, settings, tok.pad_token_id, [], options).run(ids, list(range(batch)))  # no stop ids: every row runs all steps
        total = time.perf_counter() - start
    return batch * (steps - 1) / (total - prefill)


def weight_bytes(model) -> int:
    """Bytes of weights a forward reads: parameters (tied embeddings once) and packed linear weights."""
    from srl.generation.weights import PackedLinear

    packed = sum(m.packed.numel() * m.packed.element_size() for m in model.modules() if isinstance(m, PackedLinear))
    if isinstance(model.get_output_embeddings(), PackedLinear):  # the head's packed copy is read; the input table only gathered
        embed = model.get_input_embeddings().weight
        packed -= embed.numel() * embed.element_size()
    return sum(p.numel() * p.element_size() for p in model.parameters()) + packed


def as_dtype(model, dtype: torch.dtype):
    return model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M-Instruct), a folder or a Hub id")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="replies per prompt")
    parser.add_argument("--k", type=int, default=3, help="judge samples per reply")
    parser.add_argument("--max-new", type=int, default=128, help="max new tokens per reply")
    parser.add_argument("--judge-max-new", type=int, default=64, help="max new tokens per judge sample")
    parser.add_argument("--batch", type=int, default=16, help="srl engine rows at once (generation.sampling.batch_size)")
    parser.add_argument("--weights", default="auto", help="srl's generation copy, as conf/backend/hf.yaml: auto | float32 | bfloat16")
    parser.add_argument("--baseline-dtypes", default="float32,bfloat16", help="weights the batched baselines run in (each measured)")
    parser.add_argument("--sides", default="per_prompt,batched,continuous:bfloat16,srl_float32,srl",
                        help="what to measure, in this order; a baseline as side:dtype runs in that dtype only")
    parser.add_argument("--decode-batches", default="16,64")
    parser.add_argument("--prompts-file", type=Path, default=PROMPTS_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from srl.generation.engine import EngineOptions
    from srl.generation.sample import stop_token_ids
    from srl.generation.sampling import SamplingSettings
    from srl.generation.weights import DTYPES, to_generation_format
    from srl.judging.templates import load_judge_template
    from srl.models.embedded import spec_from_name

    torch.manual_seed(args.seed)
    model, tok = spec_from_name(args.model).load()
    model.eval()
    prompts, _ = sample_prompts(args.prompts, args.seed, args.prompts_file)
    template = load_judge_template()
    cand = CandidateSettings(args.n, SamplingSettings(0.7, 0.9, args.max_new, args.batch))
    judge = JudgeSettings(template, args.k, SamplingSettings(0.7, 0.9, args.judge_max_new, args.batch))
    stops = set(stop_token_ids(tok, model))
    srl_model = copy.deepcopy(model)
    srl_dtype = to_generation_format(srl_model, args.weights) or next(model.parameters()).dtype
    srl_name = str(srl_dtype).removeprefix("torch.")

    figures: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "model": args.model,
                     "prompts": args.prompts, "n": args.n, "k": args.k, "max_new": args.max_new, "judge_max_new": args.judge_max_new,
                     "batch": args.batch, "srl_weights": srl_name, "sides": {}}
    runners = {"per_prompt": per_prompt_loop, "batched": batched_generate, "continuous": continuous_batching}
    for entry in args.sides.split(","):
        side, _, only = entry.partition(":")  # side:dtype measures a baseline in that dtype alone
        dtypes = [only] if only else ["float32"] if side == "per_prompt" else args.baseline_dtypes.split(",") if side in runners else [None]
        for dtype in dtypes:
            if side in runners:
                name, m = f"{side} {dtype}", as_dtype(model, DTYPES[dtype])
                print(f"measuring {name} ...", flush=True)
                with torch.no_grad():
                    stages = runners[side](m, tok, prompts, args.n, args.k, cand.sampling, judge.sampling, template, stops)
            else:
                name, m = ("srl float32", model) if side == "srl_float32" else (f"srl {srl_name}", srl_model)
                print(f"measuring {name} ...", flush=True)
                with tempfile.TemporaryDirectory() as tmp:
                    stages = srl_stages(m, tok, prompts, cand, judge, Path(tmp))
            figures["sides"][name] = {"candidates": stages[0], "judging": stages[1], "total": total(stages)}
            print(f"  {name}: " + ", ".join(f"{k} {v['seconds']:.1f} s, {v['tokens']} tokens" for k, v in figures["sides"][name].items()), flush=True)
            del m

    print(f"\nAIFT stage: {args.prompts} prompts x N={args.n} replies (<= {args.max_new} tokens), K={args.k} judge samples "
          f"per reply (<= {args.judge_max_new} tokens), T=0.7 top-p 0.9, model {args.model}; srl generates in {srl_name}")
    srl_key = f"srl {srl_name}"
    print(f"{'side':<22}{'stage':<12}{'seconds':>9}{'tokens':>9}{'tokens/s':>10}{'records':>9}{'srl wall ratio':>16}")
    for name, stages in figures["sides"].items():
        for stage, f in stages.items():
            f["tokens_per_s"] = f["tokens"] / f["seconds"]
            ratio = ""
            if srl_key in figures["sides"] and name != srl_key:
                f["srl_wall_ratio"] = f["seconds"] / figures["sides"][srl_key][stage]["seconds"]
                ratio = f"{f['srl_wall_ratio']:.2f}x"
            print(f"{name:<22}{stage:<12}{f['seconds']:>9.1f}{f['tokens']:>9}{f['tokens_per_s']:>10.1f}{f['records']:>9}{ratio:>16}")
    baselines = {n: s["total"]["seconds"] for n, s in figures["sides"].items() if not n.startswith(("srl", "per_prompt"))}
    if baselines and srl_key in figures["sides"]:
        best = min(baselines, key=baselines.get)
        figures["strongest_baseline"] = {"side": best, "srl_wall_ratio": baselines[best] / figures["sides"][srl_key]["total"]["seconds"]}
        print(f"strongest baseline: {best}; srl ({srl_name}) is {figures['strongest_baseline']['srl_wall_ratio']:.2f}x faster over the stage")

    # The machine's limits and pure decoding, in this run.
    limits = {"matmul_gflops_float32": matmul_gflops(torch.float32), "matmul_gflops_bfloat16": matmul_gflops(torch.bfloat16), "copy_gbps": copy_gbps()}
    figures["limits"] = limits
    print(f"\nmatmul 2048x2048: {limits['matmul_gflops_float32']:.1f} GFLOP/s float32, {limits['matmul_gflops_bfloat16']:.1f} bfloat16; "
          f"memory copy {limits['copy_gbps']:.1f} GB/s (read + write)")
    print(f"{'weights':<26}{'cache':<12}{'batch':>6}{'tokens/s':>10}{'steps/s':>9}{'weight GB/s':>13}{'of copy bw':>12}")
    figures["decode"] = []
    bf16_plain = as_dtype(model, torch.bfloat16)
    variants = (("float32", "concatenate", model, EngineOptions(reserve_cache=False)), ("float32", "reserved", model, EngineOptions()),
                ("bfloat16 (plain linears)", "reserved", bf16_plain, EngineOptions()))
    if srl_name == "bfloat16":  # srl's generation copy: bfloat16, linear layers packed on a CPU
        variants += (("bfloat16 (srl's copy)", "reserved", srl_model, EngineOptions()),)
    for weights, cache, m, options in variants:
        nbytes = weight_bytes(m)
        for batch in map(int, args.decode_batches.split(",")):
            rate = decode_rate(m, tok, batch, options)
            steps = rate / batch
            row = {"weights": weights, "cache": cache, "batch": batch, "tokens_per_s": rate, "steps_per_s": steps,
                   "weight_gbps": nbytes * steps / 1e9, "roofline_fraction": nbytes * steps / 1e9 / limits["copy_gbps"]}
            figures["decode"].append(row)
            print(f"{weights:<26}{cache:<12}{batch:>6}{rate:>10.1f}{steps:>9.2f}{row['weight_gbps']:>13.2f}{100 * row['roofline_fraction']:>11.0f}%", flush=True)
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


def total(stages) -> dict:
    return {k: sum(s[k] for s in stages) for k in ("seconds", "tokens", "records")}


if __name__ == "__main__":
    main()
