"""Full fine-tuning vs LoRA vs QLoRA vs LoRA on an 8-bit base: memory, speed and loss of SFT steps.

    python experiments/bench_peft.py [--model embedded|PATH] [--steps 8] [--rows 4] [--tokens 256]

Each variant runs in its own process (a clean peak RSS): load the model as srl's training stages do
(``srl.training.adapters.TrainingModelSpec``), take ``--steps`` AdamW steps on one fixed batch of IFT examples,
and report trainable parameters, weight bytes, the training state (weights + gradients + AdamW
state, counted from the tensors), peak RSS (which includes the libraries and activations), seconds a
step and the loss before/after.
Ratios are against full fine-tuning measured in the same run. On a CPU, bitsandbytes' 4/8-bit
matmuls dequantize on the fly: QLoRA saves memory here, not time (on a GPU the kernels are fused).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

VARIANTS = {
    "full": dict(method="none"),
    "lora": dict(method="lora", r=16, alpha=32, dropout=0.0, compute_dtype="float32"),
    "qlora": dict(method="lora", quantization="4bit", r=16, alpha=32, dropout=0.0, compute_dtype="float32"),
    "lora_8bit": dict(method="lora", quantization="8bit", r=16, alpha=32, dropout=0.0, compute_dtype="float32"),
}


def spec(model: str):
    from srl.models.embedded import EmbeddedSmolLM2Spec
    from srl.models.loading import HFModelSpec

    return EmbeddedSmolLM2Spec() if model == "embedded" else HFModelSpec(model)


def batch(tokenizer, rows: int, tokens: int):
    from srl.data.records import IFTExample
    from srl.training.encoding import collate_right, encode_sft

    path = os.path.join(os.path.dirname(__file__), "..", "srl", "data", "seed_oasst.jsonl")
    texts = [r["text"] for r in map(json.loads, open(path, encoding="utf-8")) if r.get("role") == "assistant"]
    examples = [IFTExample(prompt="Answer the question.", response=t, tree_id=str(i), message_id=str(i)) for i, t in enumerate(texts[: rows * 4])]
    encoded, _ = encode_sft(tokenizer, examples, [], max_length=tokens)
    return collate_right(encoded[:rows], tokenizer.pad_token_id)


def run_one(name: str, model_name: str, steps: int, rows: int, tokens: int) -> dict:
    import torch

    from srl.training.adapters import PeftSettings, TrainingModelSpec, trainable_parameters
    from srl.training.losses import model_logprobs

    torch.manual_seed(0)
    started = time.perf_counter()
    model, tok = TrainingModelSpec(spec(model_name), PeftSettings(**VARIANTS[name])).load()
    load_s = time.perf_counter() - started
    trainable, total = trainable_parameters(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(b.numel() * b.element_size() for b in model.buffers())
    b = batch(tok, rows, tokens)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4 if name == "full" else 1e-3)

    def loss() -> torch.Tensor:
        logprobs, _ = model_logprobs(model, b)
        return -logprobs.mean()

    model.train()
    losses, seconds = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        value = loss()
        value.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(value))
    with torch.no_grad():
        final = float(loss())
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    optimizer_bytes = sum(t.numel() * t.element_size() for state in opt.state.values() for t in state.values() if torch.is_tensor(t))
    return {
        "state_MB": (weight_bytes + grad_bytes + optimizer_bytes) / 2**20,
        "variant": name, "trainable_params": trainable, "params": total, "weight_MB": weight_bytes / 2**20,
        "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "load_s": load_s,
        "step_s": sum(seconds[1:]) / max(len(seconds) - 1, 1), "loss_first": losses[0], "loss_after": final,
        "target_tokens": int((b["labels"] != -100).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.steps, args.rows, args.tokens)))
        return
    results = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--steps", str(args.steps), "--rows", str(args.rows), "--tokens", str(args.tokens)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = next(r for r in results if r["variant"] == "full")
    print(f"model {args.model}, {args.steps} AdamW steps on one batch of {args.rows} rows x <= {args.tokens} tokens ({base['target_tokens']} target tokens), torch threads {os.cpu_count()}")
    print("| variant | trainable params | weights MB | training state MB | state vs full | peak RSS MB | s/step | step vs full | loss first -> after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['trainable_params']:,} ({r['trainable_params'] / r['params']:.1%}) | {r['weight_MB']:.0f} | {r['state_MB']:.0f} | "
            f"{r['state_MB'] / base['state_MB']:.2f} | {r['peak_rss_MB']:.0f} | {r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f} | "
            f"{r['loss_first']:.3f} -> {r['loss_after']:.3f} |"
        )


if __name__ == "__main__":
    main()
