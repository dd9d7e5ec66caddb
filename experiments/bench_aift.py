"""Benchmark: the AIFT stage (N replies per prompt, then K judge samples per reply), srl's engine vs the usual way.

Both sides use the same model, prompts, sampling (T, top-p), max new tokens and stop tokens:

* baseline: what public re-implementations do: one ``model.generate(num_return_sequences=N)`` per
  prompt, then one ``model.generate(num_return_sequences=K)`` per reply's judge prompt;
* srl: the loop's own stage functions (``generate_candidates``, ``judge_candidates``) on
  the engine (``srl/generation/engine.py``): batches across prompts, one prefill per distinct prompt, the
  rubric's key/value cache shared by every judge prompt, finished rows replaced by waiting ones.

It prints wall time, generated tokens, generated tokens/s and records of each side and stage, and
the ratios srl / baseline, all measured in this one process run. It then measures this machine's
float32 matmul throughput and the engine's pure decoding rate at its batch size, and prints the
decoding FLOP rate as a fraction of the matmul rate.

    HF_HUB_OFFLINE=1 python experiments/bench_aift.py              # SmolLM2-135M-Instruct, 8 prompts
    HF_HUB_OFFLINE=1 python experiments/bench_aift.py --model runs/x/m1/model --prompts 16
"""

from __future__ import annotations

import argparse
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


def baseline(model, tok, prompts, n, k, cand, judge, template, stops):
    """Per-prompt and per-reply ``generate`` calls; returns (candidate stage, judge stage) figures."""
    from srl.models.chat import render_prompt

    def gen(text: str, count: int, s) -> list[list[int]]:
        ids = tok(render_prompt(tok, text), add_special_tokens=False, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=s.temperature, top_p=s.top_p,
                             top_k=0, max_new_tokens=s.max_new_tokens, num_return_sequences=count, pad_token_id=tok.pad_token_id,
                             eos_token_id=sorted(stops))
        return generated_tokens(out[:, ids.shape[1]:], stops)

    start = time.perf_counter()
    replies = [(p, tok.decode(ids, skip_special_tokens=True).strip(), len(ids)) for p in prompts for ids in gen(p, n, cand)]
    cand_s = time.perf_counter() - start
    start = time.perf_counter()
    judged = [[len(ids) for ids in gen(template.render(p, r), k, judge)] for p, r, _ in replies]
    judge_s = time.perf_counter() - start
    return ({"seconds": cand_s, "tokens": sum(t for _, _, t in replies), "records": len(replies)},
            {"seconds": judge_s, "tokens": sum(map(sum, judged)), "records": len(judged)})


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


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def decode_rate(model, tok, batch: int, steps: int = 48) -> tuple[float, float]:
    """Engine tokens/s while every row decodes (prefill timed separately and subtracted), and FLOPs per token."""
    from srl.generation.engine import Engine
    from srl.generation.sampling import SamplingSettings
    from srl.models.chat import render_prompt

    ids = [tok(render_prompt(tok, f"Write a long story about the number {i}."), add_special_tokens=False)["input_ids"] for i in range(batch)]
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=steps, batch_size=batch)
    with torch.no_grad():
        start = time.perf_counter()
        Engine(model, settings, tok.pad_token_id, []).next_token_logits(ids)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        Engine(model, settings, tok.pad_token_id, []).run(ids, list(range(batch)))  # no stop ids: every row runs all steps
        total = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once: the output head's matmul
    cfg = model.config
    context = sum(map(len, ids)) / batch + steps / 2
    attention = 4 * cfg.num_hidden_layers * cfg.hidden_size * context  # scores + weighted sum, per token
    return batch * (steps - 1) / (total - prefill), 2 * params + attention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M-Instruct), a folder or a Hub id")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="replies per prompt")
    parser.add_argument("--k", type=int, default=3, help="judge samples per reply")
    parser.add_argument("--max-new", type=int, default=128, help="max new tokens per reply")
    parser.add_argument("--judge-max-new", type=int, default=64, help="max new tokens per judge sample")
    parser.add_argument("--batch", type=int, default=16, help="srl engine rows at once")
    parser.add_argument("--prompts-file", type=Path, default=PROMPTS_FILE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from srl.generation.sample import stop_token_ids
    from srl.generation.sampling import SamplingSettings
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

    with torch.no_grad():
        base = baseline(model, tok, prompts, args.n, args.k, cand.sampling, judge.sampling, template, stops)
    with tempfile.TemporaryDirectory() as tmp:
        ours = srl_stages(model, tok, prompts, cand, judge, Path(tmp))

    figures: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "model": args.model,
                     "prompts": args.prompts, "n": args.n, "k": args.k, "max_new": args.max_new, "judge_max_new": args.judge_max_new}
    print(f"\nAIFT stage: {args.prompts} prompts x N={args.n} replies (<= {args.max_new} tokens), K={args.k} judge samples "
          f"per reply (<= {args.judge_max_new} tokens), T=0.7 top-p 0.9, model {args.model}")
    print(f"{'stage':<12}{'side':<10}{'seconds':>9}{'tokens':>9}{'tokens/s':>10}{'records':>9}")
    for stage, b, s in (("candidates", base[0], ours[0]), ("judging", base[1], ours[1]),
                        ("total", total(base), total(ours))):
        for side, f in (("baseline", b), ("srl", s)):
            f["tokens_per_s"] = f["tokens"] / f["seconds"]
            print(f"{stage:<12}{side:<10}{f['seconds']:>9.1f}{f['tokens']:>9}{f['tokens_per_s']:>10.1f}{f['records']:>9}")
        ratio = s["tokens_per_s"] / b["tokens_per_s"]
        print(f"{stage:<12}{'ratio':<10}{b['seconds'] / s['seconds']:>9.2f}x wall{'':>4}{ratio:>10.2f}x tokens/s")
        figures[stage] = {"baseline": b, "srl": s, "tokens_per_s_ratio": ratio, "wall_ratio": b["seconds"] / s["seconds"]}

    peak = matmul_gflops()
    rate, flops = decode_rate(model, tok, args.batch)
    achieved = rate * flops / 1e9
    figures["roofline"] = {"matmul_gflops": peak, "decode_tokens_per_s": rate, "flops_per_token": flops,
                           "decode_gflops": achieved, "fraction_of_matmul": achieved / peak, "batch": args.batch}
    print(f"\nmatmul (2048x2048 float32): {peak:.1f} GFLOP/s; engine decoding at batch {args.batch}: {rate:.1f} tokens/s "
          f"x {flops / 1e9:.3f} GFLOP/token = {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of matmul")
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


def total(stages) -> dict:
    return {k: sum(s[k] for s in stages) for k in ("seconds", "tokens", "records")}


if __name__ == "__main__":
    main()
