"""Stage ``m{t+1}`` in semi-online mode (``iteration.sync_every``; Lanchantin et al. 2025): the policy in
memory answers, judges and pairs the iteration's prompts chunk by chunk and trains on each chunk before
the next (``srl/training/semi_online.py``), instead of M_t making every record before training starts.

Per chunk k, under ``m{t+1}/online/chunk{k}/``: ``candidates.jsonl`` and ``judgements.jsonl`` (resumable
chunks, the same seeds as offline), ``pairs.jsonl`` (reference log-probs of M_t, kept in memory as a
frozen copy), ``train_steps.csv``; then a Lightning checkpoint of the policy, optimizer, scheduler and RNG
(``m{t+1}/checkpoints/sync.ckpt``, with ``sync.json``: the chunks it has trained). A killed stage reloads
that checkpoint and goes on with the next chunk, so it writes the records an unbroken run writes. At the
end ``iter{t}/candidates.jsonl``, ``judgements.jsonl``, ``pairs.jsonl`` hold every chunk's records, and the
metrics are the offline stages' names (``iter{t}/candidates/*``, ``iter{t}/judge/*``, ``iter{t}/pairs/*``,
``m{t+1}/dpo/*``) plus ``m{t+1}/online/*``.

Built for one process, srl's HF engine and full fine-tuning; ``check_online`` refuses the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from typing import Any

import lightning as L
import torch

from srl.core import distributed, rundir
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, Judgement, Pair, PromptRecord, read_jsonl, write_json, write_jsonl
from srl.generation.candidates import CandidateSettings, candidate_metrics, generate_candidates
from srl.generation.weights import EngineSettings
from srl.judging.pointwise import judge_candidates, judgement_metrics
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import StageContext, StageResult, accumulation, trainable
from srl.pipeline.stages.iteration import encode_selected, trl_rows
from srl.pipeline.tracking import prefixed
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, reference_logprobs
from srl.training.pairs import PairSettings, select_pairs
from srl.training.semi_online import chunk_ranges, chunk_steps, sync_steps
from srl.training.sft import SFTDataModule, restore_dropout, set_dropout
from srl.training.steps import StageProgress, read_steps, restore_state, summarize, write_steps

log = logging.getLogger(__name__)

VLLM_SYNC = ("iteration.sync_every with backend=vllm needs the policy's weights pushed into the running vLLM engine at every "
             "sync (an in-place weight load, e.g. through vLLM's collective RPC, without rebuilding the engine); srl does not do "
             "that yet: use backend=hf (srl's engine generates from the weights in memory)")


def check_online(sync_every: int | None, backend: Any, peft: Any, meta: Any, pairs: PairSettings, dpo: DPOSettings | None) -> None:
    """Refuse what semi-online mode does not support yet, before any model loads."""
    if sync_every is None:
        return
    if backend is not None and not isinstance(backend, EngineSettings):  # a generation-only backend (vLLM)
        raise ValueError(VLLM_SYNC)
    unsupported = {"peft (LoRA/QLoRA: the adapter-off reference of each chunk is not built)": peft is not None and peft.enabled,
                   "meta.enabled (judge pairs per chunk are not built)": meta is not None,
                   "pairs.extra (given pairs would be trained once per chunk)": bool(pairs.extra),
                   "dpo.select (checkpoint selection of a stage whose data changes)": dpo is not None and dpo.select.enabled,
                   "several processes": distributed.world_size() > 1}
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise ValueError(f"iteration.sync_every={sync_every} (semi-online) does not support {', '.join(found)} yet; "
                         "leave iteration.sync_every=null for offline iterations")


def _chunk_pairs(policy: Any, reference: torch.nn.Module, tokenizer: Any, prompts: list[PromptRecord], k: int, folder: Any, ctx: StageContext,
                 t: int, generation: CandidateSettings, judge: JudgeSettings, pair_settings: PairSettings, dpo: DPOSettings,
                 stage: str) -> tuple[list[Pair], dict[str, Any]]:
    """Chunk k's candidates and judgements from the policy as it is now, and its pairs with M_t's reference log-probs."""
    policy.to(distributed.local_device())  # Lightning's teardown may have moved it
    stamp = ctx.stamp(stage)
    store = PartialJsonl(folder / "candidates.jsonl", Candidate, stamp)
    generate_candidates(policy, tokenizer, prompts, generation, ctx.seed, t, store, ctx.hook)
    candidates = read_jsonl(store.finish(), Candidate)
    store = PartialJsonl(folder / "judgements.jsonl", Judgement, stamp)
    judge_candidates(policy if judge.external is None else None, tokenizer, candidates, judge, ctx.seed, t, store, ctx.hook)
    judgements = read_jsonl(store.finish(), Judgement)
    selected, counts = select_pairs(candidates, judgements, pair_settings, t)
    encoded, kept = encode_selected(tokenizer, selected, dpo.max_length, counts)
    with_ref = reference_logprobs(reference, encoded, tokenizer.pad_token_id, dpo.ref_batch_size, ctx.precision) if encoded else []
    pairs = [Pair(c.prompt_id, c.prompt, c.response, r.response, cs, rs, p.ref_chosen, p.ref_rejected, c.finished, r.finished)
             for (c, r, cs, rs), p in zip(kept, with_ref)]
    write_jsonl(folder / "pairs.jsonl", pairs)
    return pairs, counts


def _trainer(ctx: StageContext, dpo: DPOSettings, name: str, folder: Any, progress: StageProgress) -> L.Trainer:
    return ctx.trainer_factory(
        max_epochs=dpo.max_epochs, accumulate_grad_batches=accumulation(dpo, name), logger=False, default_root_dir=str(folder),
        enable_checkpointing=False, callbacks=[progress], limit_val_batches=0, use_distributed_sampler=False,
    )


def run_online(ctx: StageContext, t_next: int, generation: CandidateSettings, judge: JudgeSettings, pair_settings: PairSettings,
               dpo: DPOSettings, sync_every: int) -> StageResult:
    """M_{t+1} by semi-online DPO of M_t on iteration t's prompts (module docstring)."""
    t, name = t_next - 1, f"m{t_next}"
    d, stage_dir, prefix = ctx.iter_dir(t), ctx.run_dir / name, f"m{t_next}/dpo"
    prompts = read_jsonl(d / "prompts.jsonl", PromptRecord)
    chunks = chunk_ranges(len(prompts), sync_every, dpo.batch_size)
    ckpt_dir = stage_dir / "checkpoints"
    ckpt, state_file = ckpt_dir / "sync.ckpt", ckpt_dir / "sync.json"
    done = 0
    if ckpt.is_file():  # a stopped stage: the policy, optimizer and RNG as they were after its last finished chunk
        rundir.check_stamp(ckpt_dir / "stage.json", ctx.stamp(name), f"its sync checkpoint {ckpt}", f"delete {ckpt_dir} to train the stage from its start")
        done = json.loads(state_file.read_text())["chunks"]
    model, tokenizer = ctx.models.load_train(t)
    model.to(distributed.local_device())
    reference = copy.deepcopy(model).eval().requires_grad_(False)  # M_t, frozen: every chunk's reference log-probs
    metrics: dict[str, Any] = {f"{prefix}/pairs": 0, **trainable(prefix, model)}
    L.seed_everything(dpo.seed, workers=True, verbose=False)
    previous = set_dropout(model, dpo.dropout) if dpo.dropout is not None else {}
    planned = len(chunks) * sync_every * dpo.max_epochs  # the schedule's length: every prompt of every chunk paired
    module = DPOModule(model, dpo, metric_prefix=prefix, planned_steps=planned)
    if done:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"], strict=False)
        optimization = module.configure_optimizers()
        optimizer = optimization["optimizer"] if isinstance(optimization, dict) else optimization
        optimizer.load_state_dict(state["optimizer_states"][0])
        if isinstance(optimization, dict):
            optimization["lr_scheduler"]["scheduler"].load_state_dict(state["lr_schedulers"][0])
        restore_state(state)
        log.info("stage %s: resuming after chunk %d of %d (sync checkpoint %s)", name, done, len(chunks), ckpt)
    counts: dict[str, Any] = {}
    all_pairs: list[Pair] = []
    rows: list[dict[str, float]] = []
    trainer = None
    for k, span in enumerate(chunks):
        folder = stage_dir / "online" / f"chunk{k:03d}"
        if k < done:  # trained before the stop: its records and rows are on disk
            pairs = read_jsonl(folder / "pairs.jsonl", Pair)
        else:
            pairs, chunk_counts = _chunk_pairs(model, reference, tokenizer, [prompts[i] for i in span], k, folder, ctx, t, generation,
                                               judge, pair_settings, dpo, name)
            write_json(folder / "counts.json", chunk_counts)
            if pairs:
                progress = StageProgress(folder, prefix, every_n_steps=0)
                trainer = _trainer(ctx, dpo, name, folder, progress)
                encoded = [encode_pair(tokenizer, p.prompt, p.chosen, p.rejected, dpo.max_length, p.chosen_finished, p.rejected_finished)
                           for p in pairs]
                encoded = [dataclasses.replace(e, ref_chosen=p.ref_chosen_logp, ref_rejected=p.ref_rejected_logp) for e, p in zip(encoded, pairs)]
                data = SFTDataModule(encoded, [], dpo.micro_batch_size, tokenizer.pad_token_id, dpo.seed + k, collate=collate_pairs,
                                     group_by_length=dpo.group_by_length)
                trainer.fit(module, datamodule=data)
                distributed.on_main(lambda: rundir.check(ckpt_dir).mkdir(parents=True, exist_ok=True))
                trainer.save_checkpoint(ckpt_dir / "sync.ckpt.tmp")
            else:
                log.warning("stage %s: chunk %d gave no pair; the next chunk is generated by the same policy", name, k)

            def publish(k: int = k, saved: bool = bool(pairs)) -> None:
                rundir.check(ckpt_dir).mkdir(parents=True, exist_ok=True)
                rundir.write_stamp(ckpt_dir / "stage.json", ctx.stamp(name))
                if saved:
                    rundir.replace(ckpt_dir / "sync.ckpt.tmp", ckpt)
                rundir.atomic_write_text(state_file, json.dumps({"chunks": k + 1}) + "\n")

            distributed.on_main(publish)
        chunk_counts = json.loads((folder / "counts.json").read_text())
        for key, value in chunk_counts.items():
            if isinstance(value, (int, float)) and not key.endswith("_mean"):
                counts[key] = counts.get(key, 0) + value
        offset = len(rows)
        rows += [{**r, "step": r["step"] + offset} for r in read_steps(folder / "train_steps.csv")]
        all_pairs += pairs
    restore_dropout(model, previous)
    candidates = [c for k in range(len(chunks)) for c in read_jsonl(stage_dir / "online" / f"chunk{k:03d}" / "candidates.jsonl", Candidate)]
    judgements = [j for k in range(len(chunks)) for j in read_jsonl(stage_dir / "online" / f"chunk{k:03d}" / "judgements.jsonl", Judgement)]
    if not all_pairs:
        ctx.no_pairs(f"iteration {t} (semi-online): no usable preference pair in {len(chunks)} chunks ({counts}); see {stage_dir / 'online'}")
    write_jsonl(d / "candidates.jsonl", candidates)
    write_jsonl(d / "judgements.jsonl", judgements)
    write_jsonl(d / "pairs.jsonl", all_pairs)
    write_jsonl(d / "pairs_trl.jsonl", trl_rows(all_pairs))
    distributed.on_main(lambda: write_steps(stage_dir / "train_steps.csv", rows))
    per_chunk = [len(read_jsonl(stage_dir / "online" / f"chunk{k:03d}" / "pairs.jsonl", Pair)) for k in range(len(chunks))]
    metrics.update(prefixed(f"iter{t}/candidates", candidate_metrics(candidates)))
    metrics.update(prefixed(f"iter{t}/judge", {**judgement_metrics(judgements, judge.rubric), "by": f"self (the policy, synced every {sync_every} steps)"}))
    counts["kept"] = len(all_pairs)
    counts["mean_margin"] = sum(p.chosen_score - p.rejected_score for p in all_pairs) / len(all_pairs) if all_pairs else None
    metrics.update(prefixed(f"iter{t}/pairs", counts))
    metrics.update(summarize(rows, prefix))
    metrics[f"{prefix}/steps"] = len(rows)
    metrics[f"m{t_next}/online/sync_every"] = sync_every
    metrics[f"m{t_next}/online/chunks"] = len(chunks)
    metrics[f"m{t_next}/online/syncs"] = sum(1 for n in per_chunk if n) - 1 if any(per_chunk) else 0  # policy updates between chunks
    metrics[f"m{t_next}/online/sync_steps"] = " ".join(str(s) for s in sync_steps(per_chunk, dpo.batch_size, dpo.max_epochs))
    metrics[f"m{t_next}/online/planned_steps"] = planned
    if len(rows) != sum(chunk_steps(n, dpo.batch_size, dpo.max_epochs) for n in per_chunk):
        raise RuntimeError(f"stage {name}: {len(rows)} optimizer steps, but the chunks' pairs {per_chunk} make another number")
    if trainer is None and not any(per_chunk):  # on_no_pairs=carry and no chunk gave a pair: M_{t+1} is M_t
        folder = ctx.models.folder(t_next)
        distributed.on_main(lambda: rundir.link_or_copy(ctx.models.folder(t), folder))
        metrics[f"{prefix}/skipped"] = 1
    else:
        if trainer is None:  # resumed after the last chunk that trained: a trainer to save through
            trainer = _trainer(ctx, dpo, name, stage_dir, StageProgress(stage_dir, prefix, every_n_steps=0))
        folder = ctx.models.save(model, tokenizer, t_next, trainer)
    if not ctx.keep_checkpoints:
        distributed.on_main(lambda: rundir.remove(ckpt_dir))
    del reference
    return metrics, [str(folder), str(d / "candidates.jsonl"), str(d / "judgements.jsonl"), str(d / "pairs.jsonl"), str(d / "pairs_trl.jsonl"),
                     str(stage_dir / "online")]

