"""Benchmark: srl's DPO against TRL's DPOTrainer on CPU, and srl DPO memory against srl SFT memory.

Command (from the repository root; needs ``pip install -e '.[bench]'``):

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled python experiments/bench_dpo.py

Every variant trains the same model on the same oasst1 pairs, in the same order, for ``--steps``
optimizer steps of ``--batch`` pairs (no gradient accumulation), fp32, AdamW (lr 5e-6, weight decay
0, torch defaults otherwise) at a constant lr, gradient clipping at norm 1.0, dropout 0, beta 0.1,
sigmoid loss. Each variant runs in its own child process, one after the other, because peak RSS
(``ru_maxrss``) is process-wide; the parent collects one JSON record per child and prints a table.

Variants:
- ``srl_dpo``: ``srl.training.dpo.DPOModule`` under Lightning; reference log-probs are precomputed once with
  ``srl.training.dpo.reference_logprobs`` (timed separately), so training holds one model.
- ``trl_dpo``: ``trl.DPOTrainer`` with its default reference handling (a second copy of the model,
  one reference forward per step). Gradient checkpointing off and ``optim="adamw_torch"`` (TRL's
  defaults are on and fused AdamW) so both sides do the same computation.
- ``trl_dpo_precompute``: the same with ``precompute_ref_log_probs=True`` (timed separately).
- ``srl_sft``: ``srl.training.sft.SFTModule`` on the same 2B chosen+rejected sequences per step as the DPO
  micro-batch of B pairs (a memory baseline: DPO should cost about what SFT costs).

Figures (steps counted from 0): steps/s over steps 1..N-1 (step 0 is warm-up, excluded), also with
the reference precompute amortised over the N steps; step-0 loss of srl and TRL (both should be ln 2: policy =
reference) and their step-0 mean summed log-probs of chosen/rejected (same tokens and masks), losses
at steps 1..2 (same optimizer, same batches); peak RSS per variant (MiB). Step times exclude data
loading. TRL is fed conversational rows (prompt/chosen/rejected message lists), so it applies the
chat template itself and appends no EOS; the script checks that its token ids equal srl's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: srl need not be pip-installed
from common import load_model as common_load_model  # noqa: E402
from common import machine, rss_mib  # noqa: E402
VARIANTS = ("srl_dpo", "trl_dpo", "trl_dpo_precompute", "srl_sft")
LR, BETA, CLIP, SEED = 5e-6, 0.1, 1.0, 0
MARK = "BENCH_CHILD_JSON "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' (SmolLM2-135M-Instruct) or a folder/Hub id")
    p.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (B)")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per variant (the first is warm-up)")
    p.add_argument("--max-length", type=int, default=512, help="pairs longer than this (tokens) are skipped")
    p.add_argument("--pairs-file", default="/work/shared/data/oasst1/en_validation.jsonl")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    p.add_argument("--json-out", help="also write the figures to this JSON file")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def pairs_path(name: str) -> Path:
    path = Path(name)
    return path if path.is_file() or path.is_absolute() else ROOT / name


def load_pairs(args: argparse.Namespace, tokenizer) -> tuple[list[tuple[str, str, str]], list]:
    """The first B*steps oasst1 first-turn pairs (best vs worst ranked reply) whose chosen and rejected
    sequences both fit ``max_length`` untruncated, in file order: (texts, srl EncodedPairs)."""
    from srl.data.oasst import first_turns, load_local
    from srl.training.dpo import encode_pair

    texts, encoded, need = [], [], args.batch * args.steps
    for turn in first_turns(load_local(pairs_path(args.pairs_file))):
        if len(turn.replies) < 2:
            continue
        triple = (turn.prompt.text, turn.replies[0].text, turn.replies[-1].text)
        pair = encode_pair(tokenizer, *triple, max_length=10**9)  # no truncation: skip long pairs instead
        if max(len(pair.chosen.input_ids), len(pair.rejected.input_ids)) <= args.max_length:
            texts.append(triple)
            encoded.append(pair)
        if len(texts) == need:
            return texts, encoded
    raise SystemExit(f"only {len(texts)} pairs fit max_length {args.max_length}; need {need}")


def load_model(args: argparse.Namespace):
    import torch

    torch.manual_seed(SEED)
    return common_load_model(args.model, dropout=0.0)


class StepTimer:
    """Wall seconds and process CPU seconds (all threads) per step. On a shared machine both stretch:
    wall time by waiting for a core, CPU time by OpenMP threads spinning while a peer is descheduled."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall.append(time.perf_counter() - self.t0)
        self.cpu.append(time.process_time() - self.c0)

    def __enter__(self) -> "StepTimer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def step_record(timer: StepTimer, losses: list[float], logps: list[tuple[float, float]]) -> dict:
    mean = lambda xs: sum(xs[1:]) / len(xs[1:]) if len(xs) > 1 else None  # noqa: E731 - step 0 is warm-up
    return {"step_s": timer.wall, "cpu_step_s": timer.cpu, "losses": losses, "logps": logps,
            "mean_step_s": mean(timer.wall), "mean_cpu_step_s": mean(timer.cpu)}


def run_srl(args: argparse.Namespace, sft: bool) -> dict:
    """srl DPO (or SFT on the same sequences) under a Lightning Trainer with a per-batch clock."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    import srl.training.dpo as dpo
    from srl.training.sft import SFTModule, SFTSettings

    model, tokenizer = load_model(args)
    _, encoded = load_pairs(args, tokenizer)
    out = {"rss_after_load_mib": rss_mib()}
    optimizer = functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0)
    common = dict(optimizer=optimizer, scheduler=None, batch_size=args.batch, micro_batch_size=args.batch,
                  max_length=args.max_length, dropout=0.0, seed=SEED)
    logps: list[tuple[float, float]] = []
    if sft:
        module = SFTModule(model, SFTSettings(**common), metric_prefix="bench/sft")
    else:
        with StepTimer() as pre:
            encoded = dpo.reference_logprobs(model, encoded, tokenizer.pad_token_id, batch_size=args.batch)
        out["ref_precompute_s"], out["ref_precompute_cpu_s"] = pre.wall[0], pre.cpu[0]
        module = dpo.DPOModule(model, dpo.DPOSettings(beta=BETA, **common), metric_prefix="bench/dpo")
        original = dpo.policy_logprobs

        def recording(model, batch):  # DPOModule.training_step looks this name up in srl.training.dpo at call time
            chosen, rejected = original(model, batch)
            logps.append((chosen.detach().mean().item(), rejected.detach().mean().item()))
            return chosen, rejected

        dpo.policy_logprobs = recording  # installed after the precompute, so only training steps record
    # SFTDataModule always shuffles its training loader; a plain in-order loader gives TRL's batches.
    # SFT batches are collate_pairs too: rows = the B chosen then the B rejected sequences (ref keys unused).
    loader = DataLoader(encoded, batch_size=args.batch, shuffle=False,
                        collate_fn=lambda items: dpo.collate_pairs(items, tokenizer.pad_token_id))

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.timer, self.losses = StepTimer(), []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.timer.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.timer.stop()  # forward + backward + clip + AdamW step
            self.losses.append(float(outputs["loss"]))

    clock = Clock()
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=args.steps, accumulate_grad_batches=1,
                        gradient_clip_val=CLIP, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock])
    trainer.fit(module, train_dataloaders=loader)
    return {**out, **step_record(clock.timer, clock.losses, logps)}


def run_trl(args: argparse.Namespace, precompute: bool) -> dict:
    """TRL DPOTrainer on the same pairs and order; records its own loss and logps/* at each step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model(args)
    texts, encoded = load_pairs(args, tokenizer)
    out = {"rss_after_load_mib": rss_mib()}
    # Conversational rows: TRL renders prompt (with generation prompt) and prompt+reply with the chat
    # template, like srl.models.chat.split_prompt_completion. Plain-text rows would get an extra EOS appended.
    rows = [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in texts]
    records: list[tuple[float, float, float]] = []
    timer = StepTimer()

    class Bench(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            m = self._metrics["train"]  # unrounded, unlike the logged "loss"
            records.append((loss.item(), m["logps/chosen"][-1], m["logps/rejected"][-1]))
            return loss

        def _precompute_ref_logps(self, dataset, name, batch_size):
            with StepTimer() as pre:
                result = super()._precompute_ref_logps(dataset, name, batch_size)
            out["ref_precompute_s"], out["ref_precompute_cpu_s"] = pre.wall[0], pre.cpu[0]
            return result

    class Clock(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            timer.start()

        def on_step_end(self, args_, state, control, **kwargs):
            timer.stop()  # forward(s) + backward + clip + AdamW step

    with tempfile.TemporaryDirectory() as tmp:
        config = DPOConfig(
            output_dir=tmp, bf16=False, fp16=False, use_cpu=True, per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
            weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, optim="adamw_torch",
            max_grad_norm=CLIP, beta=BETA, loss_type=["sigmoid"], max_steps=args.steps, logging_steps=1,
            report_to="none", save_strategy="no", dataloader_num_workers=0, seed=SEED, data_seed=SEED,
            max_length=args.max_length, gradient_checkpointing=False, disable_dropout=True,
            train_sampling_strategy="sequential", precompute_ref_log_probs=precompute,
            precompute_ref_batch_size=args.batch, disable_tqdm=True,
        )
        trainer = Bench(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                        callbacks=[Clock()])
        ds = trainer.train_dataset
        same = sum(list(ds[i]["prompt_ids"]) + list(ds[i][side + "_ids"]) == list(getattr(e, side).input_ids)
                   and len(ds[i]["prompt_ids"]) == sum(1 for x in getattr(e, side).labels if x == -100)
                   for i, e in enumerate(encoded) for side in ("chosen", "rejected"))
        out["ids_equal_srl"] = f"{same}/{2 * len(encoded)}"
        trainer.train()
    return {**out, **step_record(timer, [r[0] for r in records], [(r[1], r[2]) for r in records])}


def child(args: argparse.Namespace) -> None:
    import torch

    runner = {"srl_dpo": lambda: run_srl(args, sft=False), "srl_sft": lambda: run_srl(args, sft=True),
              "trl_dpo": lambda: run_trl(args, precompute=False), "trl_dpo_precompute": lambda: run_trl(args, precompute=True)}
    load_start = os.getloadavg()[0]  # 1-min load average: above torch_threads means the CPU was shared
    result = runner[args.child]()
    result.update(peak_rss_mib=rss_mib(), torch_threads=torch.get_num_threads(), load1_start=load_start, load1_end=os.getloadavg()[0])
    print(MARK + json.dumps(result), flush=True)


def summarize(args: argparse.Namespace, results: dict) -> dict:
    """Derived figures: steps/s (plain and with the reference precompute amortised), ratios, loss checks."""
    fig: dict = {"config": {"model": args.model, "batch_pairs": args.batch, "steps": args.steps, "max_length": args.max_length,
                            "lr": LR, "beta": BETA, "grad_clip": CLIP, "timed_steps": f"1..{args.steps - 1} (step 0 = warm-up, excluded)"},
                 "variants": results}
    for r in results.values():
        r["steps_per_s"] = 1 / r["mean_step_s"] if r.get("mean_step_s") else None
        # The precompute covers exactly the pairs of the N steps, so its share per step is 1/N of it.
        r["amortised_step_s"] = (r["mean_step_s"] or 0) + r.get("ref_precompute_s", 0) / args.steps
        r["amortised_cpu_step_s"] = (r["mean_cpu_step_s"] or 0) + r.get("ref_precompute_cpu_s", 0) / args.steps
        r["steps_per_s_amortised"] = 1 / r["amortised_step_s"] if r.get("mean_step_s") else None
    s, t, sft = results.get("srl_dpo"), results.get("trl_dpo"), results.get("srl_sft")
    if s and t and s["mean_step_s"] and t["mean_step_s"]:
        # srl/TRL speed = TRL time per step / srl time per step (>1: srl faster)
        fig["speed_ratio_srl_over_trl_steps_only"] = t["mean_step_s"] / s["mean_step_s"]
        fig["speed_ratio_srl_over_trl_amortised"] = t["amortised_step_s"] / s["amortised_step_s"]
        fig["speed_ratio_srl_over_trl_amortised_cpu_time"] = t["amortised_cpu_step_s"] / s["amortised_cpu_step_s"]
        fig["peak_rss_ratio_srl_dpo_over_trl_dpo"] = s["peak_rss_mib"] / t["peak_rss_mib"]
        diffs = [abs(a - b) for a, b in zip(s["losses"], t["losses"])]
        fig["loss_abs_diff_by_step"] = diffs
        fig["step0_loss_check"] = "PASS" if diffs and diffs[0] <= 1e-4 else "FAIL"
        fig["step0_logps_srl"], fig["step0_logps_trl"] = s["logps"][0], t["logps"][0]
    if s and sft:
        fig["peak_rss_ratio_srl_dpo_over_srl_sft"] = s["peak_rss_mib"] / sft["peak_rss_mib"]
    return fig


def report(fig: dict, info: dict, command: str) -> None:
    print(f"\ncommand: {command}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    c = fig["config"]
    print(f"setup: {c['model']}, B={c['batch_pairs']} pairs/step (SFT: the same 2B={2 * c['batch_pairs']} chosen+rejected "
          f"sequences/step), {c['steps']} steps, max_length {c['max_length']}, fp32, AdamW lr {LR} constant, clip {CLIP}, "
          f"beta {BETA}; timed steps {c['timed_steps']}; data loading not timed")
    fmt = lambda v, spec: "-".rjust(int(spec.split(".")[0])) if v is None else format(v, spec)  # noqa: E731
    print(f"\n{'variant':19} {'steps/s':>7} {'s/step':>6} {'CPU s/step':>10} {'step0 s':>7} {'ref pre s':>9} "
          f"{'steps/s amort':>13} {'RSS load MiB':>12} {'peak RSS MiB':>12} {'load1':>9}  losses (steps 0..2)")
    for name, r in fig["variants"].items():
        print(f"{name:19} {fmt(r['steps_per_s'], '7.4f')} {fmt(r['mean_step_s'], '6.1f')} {fmt(r['mean_cpu_step_s'], '10.1f')} "
              f"{r['step_s'][0]:7.1f} {fmt(r.get('ref_precompute_s'), '9.1f')} {fmt(r['steps_per_s_amortised'], '13.4f')} "
              f"{r['rss_after_load_mib']:12.0f} {r['peak_rss_mib']:12.0f} {r['load1_start']:4.1f}/{r['load1_end']:<4.1f}  {[round(x, 6) for x in r['losses'][:3]]}")
    print("(steps/s amort: the reference precompute, where a variant has one, spread over its steps; CPU s = process CPU "
          "time, all threads; load1 = 1-min load average at child start/end: above the torch threads, the CPU was shared "
          "and CPU s/step near s/step rather than threads x s/step points to thread oversubscription)")
    if "speed_ratio_srl_over_trl_steps_only" in fig:
        s, t = fig["step0_logps_srl"], fig["step0_logps_trl"]
        print(f"\nspeed srl/TRL, primary (srl's reference precompute amortised over the {c['steps']} steps: like for like, "
              f"as TRL's default runs its reference forward inside each step): {fig['speed_ratio_srl_over_trl_amortised']:.3f} "
              f"wall, {fig['speed_ratio_srl_over_trl_amortised_cpu_time']:.3f} CPU time")
        print(f"speed srl/TRL, training steps only (srl's precompute not counted): {fig['speed_ratio_srl_over_trl_steps_only']:.3f}")
        print(f"peak RSS srl_dpo/trl_dpo: {fig['peak_rss_ratio_srl_dpo_over_trl_dpo']:.3f}")
        print(f"step-0 loss |srl - TRL| = {fig['loss_abs_diff_by_step'][0]:.2e} (target <= 1e-4): {fig['step0_loss_check']}")
        print(f"loss |srl - TRL| at steps 0..{len(fig['loss_abs_diff_by_step']) - 1}: "
              + ", ".join(f"{d:.1e}" for d in fig["loss_abs_diff_by_step"]))
        print(f"step-0 policy summed log-probs, batch mean (chosen, rejected): srl ({s[0]:.4f}, {s[1]:.4f})  TRL ({t[0]:.4f}, {t[1]:.4f})")
        print(f"TRL token ids equal to srl's (sequences): {fig['variants']['trl_dpo']['ids_equal_srl']}")
    if "peak_rss_ratio_srl_dpo_over_srl_sft" in fig:
        print(f"peak RSS srl_dpo/srl_sft (same model, same 2B sequences per forward): {fig['peak_rss_ratio_srl_dpo_over_srl_sft']:.3f}")


def main() -> None:
    args = parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
        os.environ.setdefault(key, value)  # children inherit these
    if args.child:
        return child(args)
    command = shlex.join(["python", *sys.argv])
    results = {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {VARIANTS}")
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", name], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
        if proc.returncode or line is None:
            sys.stderr.write(proc.stderr[-4000:] + proc.stdout[-2000:])
            raise SystemExit(f"variant {name} failed (exit {proc.returncode})")
        results[name] = json.loads(line[len(MARK):])
        print(f"  {name}: steps {[round(x, 1) for x in results[name]['step_s']]} s, peak RSS "
              f"{results[name]['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    fig = summarize(args, results)
    info = machine()
    fig.update(machine=info, command=command)
    report(fig, info, command)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(fig, indent=2))
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
