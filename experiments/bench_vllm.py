"""Benchmark: srl's HF engine vs the vLLM backend, generating for the same prompts and seeds on one GPU.

Prompts are the Self-Instruct user-oriented evaluation instructions from ``../shared/data`` when
present, else the first-turn prompts of srl's embedded seed data; they are repeated (with their
own seeds) up to ``--prompts``. Both backends get the chat-templated token ids, the same stop ids
and the same sampling settings (default: the paper's candidate settings T=0.7, top-p 0.9). The HF
engine runs first and is freed before vLLM takes its share of the card. Load time is reported
apart from generation time; tokens/s counts generated tokens only.

    HF_HUB_OFFLINE=1 python experiments/bench_vllm.py --model embedded --prompts 256 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from srl.data.oasst import first_turns, load_local

ROOT = Path(__file__).resolve().parents[1]
SHARED_PROMPTS = ROOT.parent / "shared" / "data" / "prompts" / "user_oriented_instructions.jsonl"
SEED_OASST = ROOT / "srl" / "data" / "seed_oasst.jsonl"


def load_prompts(n: int) -> tuple[list[str], str]:
    """``n`` prompt texts (cycled when the source has fewer) and where they came from."""
    if SHARED_PROMPTS.is_file():
        from srl.data.prompt_sets import read_self_instruct

        texts, source = [p.prompt for p in read_self_instruct(SHARED_PROMPTS)], str(SHARED_PROMPTS)
    else:

        texts, source = [t.prompt.text for t in first_turns(load_local(SEED_OASST))], str(SEED_OASST)
    return [texts[i % len(texts)] for i in range(n)], source


def model_folder(name: str, spec) -> str:
    """What vLLM loads: the embedded model's converted folder, a local folder, or a Hub id."""
    from srl.models.embedded import EMBEDDED_NAMES

    if name in EMBEDDED_NAMES:
        return str(spec.folder())  # spec.load() has converted it already
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded, a model folder (e.g. a run's m1/model) or a Hub id")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--tp", type=int, default=1, help="vLLM tensor_parallel_size")
    parser.add_argument("--dtype", default="bfloat16", help="both backends (vLLM gets the same name)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--hf-batch", type=int, default=64, help="rows the HF engine decodes at once")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    from srl.generation.vllm import VLLMGenerator, VLLMSettings, require_vllm

    try:
        require_vllm()
    except (ModuleNotFoundError, RuntimeError) as exc:
        sys.exit(f"bench_vllm: {exc}")

    import torch

    from srl.core.hashing import derive_seed
    from srl.generation.sample import generate_ids, stop_token_ids
    from srl.generation.sampling import SamplingSettings
    from srl.models.chat import render_prompt
    from srl.models.embedded import spec_from_name
    from srl.models.loading import resolve_dtype

    texts, source = load_prompts(args.prompts)
    seeds = [derive_seed(args.seed, "bench_vllm", i) for i in range(len(texts))]
    settings = SamplingSettings(args.temperature, args.top_p, args.max_new_tokens, args.hf_batch)
    results = {}

    start = time.perf_counter()
    spec = spec_from_name(args.model, dtype=args.dtype)
    model, tok = spec.load()
    model = model.cuda().eval()
    load_s = time.perf_counter() - start
    encoded = [tok(render_prompt(tok, t), add_special_tokens=False)["input_ids"] for t in texts]
    stops = stop_token_ids(tok, model)
    with torch.no_grad():
        generate_ids(model, encoded[:2], seeds[:2], SamplingSettings(0.0, 1.0, 4, 2), tok.pad_token_id, stops)  # CUDA warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        hf = generate_ids(model, encoded, seeds, settings, tok.pad_token_id, stops)
        torch.cuda.synchronize()
    results["hf"] = (hf, load_s, time.perf_counter() - start)
    del model
    gc.collect()
    torch.cuda.empty_cache()  # vLLM sizes its KV cache from the memory left free

    start = time.perf_counter()
    gen = VLLMGenerator(model_folder(args.model, spec), VLLMSettings(
        tensor_parallel_size=args.tp, gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=str(resolve_dtype(args.dtype)).removeprefix("torch."), seed=args.seed))  # "bf16" -> "bfloat16"
    load_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        ours = gen.generate_ids(encoded, seeds, settings, tok.pad_token_id, stops)
        results["vllm"] = (ours, load_s, time.perf_counter() - start)
    finally:
        gen.close()

    rows = {}
    print(f"\n{len(texts)} prompts from {source}, model {args.model}, dtype {args.dtype}, "
          f"T={args.temperature} top-p={args.top_p}, max_new_tokens={args.max_new_tokens}, "
          f"{torch.cuda.get_device_name()}")
    print(f"{'backend':<9}{'rows':>6}{'finished':>10}{'gen tokens':>12}{'load s':>9}{'gen s':>9}{'tokens/s':>11}")
    for name, (out, load, seconds) in results.items():
        tokens = sum(len(ids) for ids, _ in out)
        rows[name] = {"rows": len(out), "finished": sum(f for _, f in out), "tokens": tokens, "load_s": load,
                      "seconds": seconds, "tokens_per_s": tokens / seconds}
        r = rows[name]
        print(f"{name:<9}{r['rows']:>6}{r['finished']:>10}{r['tokens']:>12}{load:>9.1f}{seconds:>9.1f}{r['tokens_per_s']:>11.0f}")
    ratio = rows["vllm"]["tokens_per_s"] / rows["hf"]["tokens_per_s"]
    print(f"vLLM / HF tokens/s: {ratio:.2f}x")
    if args.temperature <= 0:  # sampled rows differ by design (different RNGs); greedy ones should mostly agree
        same = sum(a == b for a, b in zip(results["hf"][0], results["vllm"][0]))
        print(f"greedy rows identical in both backends: {same}/{len(texts)}")
    figures = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "model": args.model, "source": source,
               "device": torch.cuda.get_device_name(), "backends": rows, "vllm_over_hf": ratio}
    print(json.dumps(figures))
    if args.json_out:
        args.json_out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
