"""The self-rewarding loop over a run directory (paper Sec. 3, Fig. 1).

Stages, each reading the files of the one before and recorded in ``manifest.json`` when complete:
``data`` (IFT/EFT/held-out files) -> ``m1`` (SFT of M0 on IFT+EFT) -> for t = 1..T-1:
``iter{t}/prompts`` -> ``iter{t}/candidates`` -> ``iter{t}/judgements`` -> ``iter{t}/pairs``
(with the reference log-probs of M_t) -> ``m{t+1}`` (DPO of M_t). Models are ``save_pretrained``
folders at ``m{t}/model``. With ``eval.in_loop``, an ``eval/m{t}`` stage follows the data (M0, the
starting model) and every model, and the run ends with ``eval/table.md``: a row per model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L

from srl import aift, distributed, evalsets, oasst
from srl.adapters import AdapterChainSpec, PeftSettings, TrainingModelSpec, save_trained, trainable_parameters
from srl.evaluate import EvalSettings, evaluate_model, reference_baseline
from srl.report import write_table
from srl.chat import encode_sft
from srl.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, reference_logprobs
from srl.generation import SamplingSettings, sample_texts
from srl.models import HFModelSpec, ModelSlot, load_tokenizer
from srl.pairs import PairSettings, select_pairs
from srl.records import (
    Candidate, EFTExample, IFTExample, Judgement, Pair, PartialJsonl, PromptAttempt, PromptRecord, RankedPrompt, read_jsonl, write_jsonl,
)
from srl.sft import SFTDataModule, SFTModule, SFTSettings, cap, restore_dropout, set_dropout
from srl.stages import Manifest, find_manifests, link_or_copy
from srl.strategies import full_state_dict
from srl.tracking import SAMPLE_ROWS, Tracker

log = logging.getLogger(__name__)

ITERATION_STAGES = ("prompts", "candidates", "judgements", "pairs")


class NoPairsError(RuntimeError):
    """An iteration produced no usable preference pair; training on nothing is refused."""


def stage_names(num_models: int, evaluate: bool = False) -> list[str]:
    """The run's stages in order; with ``evaluate``, ``eval/m{t}`` after the data (M0) and each model."""
    names = ["data"] + (["eval/m0"] if evaluate else []) + ["m1"] + (["eval/m1"] if evaluate else [])
    for t in range(1, num_models):
        names += [f"iter{t}/{s}" for s in ITERATION_STAGES] + [f"m{t + 1}"] + ([f"eval/m{t + 1}"] if evaluate else [])
    return names


@dataclasses.dataclass
class LoopSettings:
    """``num_models``: M1..M_T (paper: 3); ``stop_after``: the last stage to run (None: all);
    ``reuse_from``: a folder of earlier runs whose finished stages with the same config are linked
    instead of run (a sweep over a later stage); ``on_no_pairs``: what an iteration without a usable
    prompt or pair does: ``error`` (stop with the reason) or ``carry`` (log it, count it, and make
    M_{t+1} a copy of M_t, so a sweep job whose judge never parses still finishes and shows 0 pairs)."""

    num_models: int = 3
    stop_after: str | None = None
    seed: int = 0
    reuse_from: str | None = None
    on_no_pairs: str = "error"

    def __post_init__(self) -> None:
        if self.num_models < 1:
            raise ValueError(f"iteration.num_models must be >= 1, got {self.num_models}")
        if self.on_no_pairs not in ("error", "carry"):
            raise ValueError(f"iteration.on_no_pairs must be 'error' or 'carry', got {self.on_no_pairs!r}")
        names = stage_names(self.num_models, evaluate=True)
        if self.stop_after is not None and self.stop_after not in names:
            raise ValueError(f"iteration.stop_after={self.stop_after!r} is not a stage of this run; stages: {names}")


@dataclasses.dataclass
class DataSettings:
    """``conf/data``: the oasst1 source, how files are built, and the EFT judge's sampling."""

    source: oasst.OasstSource
    build: oasst.BuildSettings
    eft_sampling: SamplingSettings = dataclasses.field(default_factory=SamplingSettings)


def _replace_dir(tmp: Path, final: Path) -> None:
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


class SelfRewardingLoop:
    def __init__(
        self,
        run_dir: str | Path,
        model: Any,
        data: DataSettings,
        judge: aift.JudgeSettings,
        sft: SFTSettings,
        trainer_factory: Callable[..., L.Trainer],
        loop: LoopSettings,
        fingerprints: dict[str, str],
        tracker: Tracker,
        prompt_gen: aift.PromptGenSettings | None = None,
        generation: aift.CandidateSettings | None = None,
        dpo: DPOSettings | None = None,
        evaluation: EvalSettings | None = None,
        pairs: PairSettings | None = None,
        hook: aift.ChunkHook | None = None,
        peft: PeftSettings | None = None,
        backend: Any | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.model_spec, self.data, self.judge, self.sft = model, data, judge, sft
        self.prompt_gen, self.generation, self.dpo = prompt_gen, generation, dpo
        self.trainer_factory, self.settings, self.fingerprints, self.tracker = trainer_factory, loop, fingerprints, tracker
        self.hook = hook
        self.pairs = pairs if pairs is not None else PairSettings(seed=loop.seed)
        self.evaluation = evaluation if evaluation is not None and evaluation.in_loop else None
        self.stages = stage_names(loop.num_models, self.evaluation is not None)
        if loop.stop_after is not None and loop.stop_after not in self.stages:
            raise ValueError(f"iteration.stop_after={loop.stop_after!r} is not a stage of this run (eval.in_loop is off); stages: {self.stages}")
        self.manifest = Manifest(self.run_dir)
        self.peft = peft if peft is not None else PeftSettings()
        self.slot = ModelSlot(backend, distributed.local_device())

    def run(self) -> dict[str, Any]:
        """Run every stage not finished yet; ``summary.json`` is written at the end, and also when a
        stage fails (with ``status`` saying where and why), so a failed job of a sweep keeps its metrics."""
        self.tracker.summary["status"] = "running"
        try:
            self._run_stages()
        except Exception as exc:
            failed = next((s for s in self.stages if s not in self.manifest.data["stages"]), "?")
            self.tracker.summary["status"] = f"failed at {failed}: {type(exc).__name__}: {exc}"
            self.tracker.write_summary()
            raise
        self.tracker.summary["status"] = "ok"
        self.write_eval_table()
        self.tracker.write_summary()
        return self.tracker.summary

    def _run_stages(self) -> None:
        # Reuse is for a prefix of the run: once a stage runs here, later ones run here too.
        sources = find_manifests(self.settings.reuse_from, self.run_dir) if self.settings.reuse_from else []
        for stage in self.stages:
            fingerprint = self.fingerprints[stage]
            if sources and stage not in self.manifest.data["stages"]:
                adopted = self.manifest.adopt(stage, fingerprint, sources)
                distributed.barrier()  # rank 0 linked the earlier run's outputs
                if adopted is not None:
                    self.tracker.log(adopted)
                    if stage == self.settings.stop_after:
                        break
                    continue
            if stage.startswith("eval/") and stage in self.manifest.data["stages"] and not self.manifest.recorded(stage, fingerprint):
                # Evaluations derive from finished models: a changed eval config reruns them, nothing else.
                log.info("stage %s: evaluation config changed, running it again", stage)
                for output in self.manifest.forget(stage):
                    distributed.on_main(lambda: shutil.rmtree(output, ignore_errors=True))
            if self.manifest.done(stage, fingerprint):
                log.info("stage %s: already finished, skipped", stage)
                self.tracker.summary.update(self.manifest.metrics(stage))
            else:
                log.info("stage %s: running", stage)
                started = time.perf_counter()
                if not stage.startswith("eval/"):  # evaluations are side branches: training stages may still be reused
                    sources = []
                metrics, outputs = self.run_stage(stage)
                metrics[f"time/{stage}_s"] = round(time.perf_counter() - started, 2)
                self.tracker.log(metrics)
                self.manifest.record(stage, fingerprint, metrics, outputs)
                distributed.barrier()  # the stage's files are complete before any rank reads them
            if stage == self.settings.stop_after:
                break

    def run_stage(self, stage: str) -> tuple[dict[str, Any], list[str]]:
        if stage == "data":
            return self.stage_data()
        if stage == "m1":
            return self.stage_m1()
        if stage.startswith("eval/"):
            return self.stage_eval(int(stage[len("eval/m"):]))
        if stage.startswith("iter"):
            head, kind = stage.split("/")
            return getattr(self, f"stage_{kind}")(int(head[4:]))
        return self.stage_dpo(int(stage[1:]))

    # -- models -------------------------------------------------------------------------------
    def model_folder(self, t: int) -> Path:
        """Where M_t is saved: ``m{t}/model`` (a plain HF folder), or ``m{t}/adapter`` (peft.save=adapter)."""
        return self.run_dir / f"m{t}" / ("adapter" if self.peft.save == "adapter" else "model")

    def spec_m(self, t: int) -> Any:
        """How to load M_t: the starting model for t = 0, else its folder (or M0 plus the adapters of M1..M_t)."""
        if t == 0:
            return self.model_spec
        if self.peft.save == "adapter":
            folders = [self.model_folder(u) for u in range(1, t + 1)]
            return AdapterChainSpec(self.model_spec, [str(f) for f in folders if (f / "adapter_config.json").is_file()])
        return HFModelSpec(str(self.model_folder(t)), dtype=getattr(self.model_spec, "dtype", "float32"))

    def load(self, key: str, spec: Any) -> tuple[Any, Any]:
        """Load a model for generation once and keep it while consecutive stages use it (one model in memory)."""
        return self.slot.get(key, spec)

    def load_m(self, t: int) -> tuple[Any, Any]:
        return self.load(f"m{t}", self.spec_m(t))

    def load_train(self, t: int) -> tuple[Any, Any]:
        """M_t as a training stage takes it: under ``conf/peft`` quantized and wrapped in a fresh adapter."""
        if not self.peft.enabled:
            return self.slot.get(f"m{t}", self.spec_m(t), train=True)
        return self.slot.get(f"train:m{t}", TrainingModelSpec(self.spec_m(t), self.peft), train=True)

    def save(self, model: Any, tokenizer: Any, t: int, trainer: L.Trainer) -> Path:
        """Save the model a training stage produced as M_t (rank 0; adapters merged unless peft.save=adapter).

        Under a sharded strategy (FSDP, DeepSpeed ZeRO-3) the weights are gathered first (a collective
        call) and rank 0 loads them into a fresh copy of the model it trained, which it saves."""
        folder = self.model_folder(t)
        state = full_state_dict(trainer)
        self.slot.clear()  # the trained model in memory is no longer M_{t-1}; a quantized merge reloads the base

        def write() -> None:
            trained = model
            if state is not None:
                trained, _ = (TrainingModelSpec(self.spec_m(t - 1), self.peft) if self.peft.enabled else self.spec_m(t - 1)).load()
                trained.load_state_dict(state)
            save_trained(trained, tokenizer, self.spec_m(t - 1), self.peft, folder)

        distributed.on_main(write)
        return folder

    # -- data and SFT ---------------------------------------------------------------------------
    def stage_data(self) -> tuple[dict[str, Any], list[str]]:
        messages = self.data.source.load()
        judge_fn = None
        if self.data.build.eft_mode == "paper":
            model, tokenizer = self.load("m0", self.model_spec)

            def judge_fn(prompts: list[str], seeds: list[int]) -> list[str]:
                return sample_texts(model, tokenizer, prompts, seeds, self.data.eft_sampling)

        result = oasst.build(messages, self.data.build, self.judge.template, judge_fn)
        out, tmp = self.run_dir / "data", self.run_dir / "data.tmp"

        def write() -> None:
            shutil.rmtree(tmp, ignore_errors=True)
            result.write(tmp)
            _replace_dir(tmp, out)

        distributed.on_main(write)
        log.info("data from %s: %s", self.data.source.describe(), result.counts)
        return {f"data/{k}": v for k, v in result.counts.items()}, [str(out)]

    def stage_m1(self) -> tuple[dict[str, Any], list[str]]:
        data_dir, s = self.run_dir / "data", self.sft
        ift = cap(read_jsonl(data_dir / "ift_train.jsonl", IFTExample), s.max_ift_examples, s.seed)
        eft = cap(read_jsonl(data_dir / "eft_train.jsonl", EFTExample), s.max_eft_examples, s.seed) if s.use_eft else []
        val_ift = cap(read_jsonl(data_dir / "ift_heldout.jsonl", IFTExample), s.max_val_examples, s.seed)
        model, tokenizer = self.load_train(0)
        train, counts = encode_sft(tokenizer, ift, eft, s.max_length)
        val, _ = encode_sft(tokenizer, val_ift, [], s.max_length)
        metrics: dict[str, Any] = {f"m1/sft/data/{k}": v for k, v in counts.items()}
        metrics.update(self._trainable("m1/sft", model))
        prefix = "m1/sft"
        module = SFTModule(model, s, metric_prefix=prefix)
        datamodule = SFTDataModule(train, val, s.micro_batch_size, tokenizer.pad_token_id, s.seed, group_by_length=s.group_by_length)
        trainer, seconds = self._fit(module, datamodule, s, "m1", metrics, prefix, validate_first=bool(val))
        metrics[f"{prefix}/train_tokens_per_s"] = round(module.tokens_seen / max(seconds, 1e-9), 1)
        metrics[f"{prefix}/steps"] = trainer.global_step
        return metrics, [str(self.save(model, tokenizer, 1, trainer))]

    @staticmethod
    def _accumulation(s: Any, name: str) -> int:
        """Micro-batches per optimizer step on each process: ``batch_size`` is the global batch, so
        ``micro_batch_size`` x processes x accumulation = ``batch_size`` however many processes train."""
        world = distributed.world_size()
        if s.accumulate_grad_batches % world:
            section = "sft" if name == "m1" else "dpo"
            raise ValueError(
                f"{section}.batch_size={s.batch_size} is not a multiple of {section}.micro_batch_size x processes "
                f"({s.micro_batch_size} x {world}): the global batch cannot be split evenly over the processes"
            )
        return s.accumulate_grad_batches // world

    @staticmethod
    def _trainable(prefix: str, model: Any) -> dict[str, Any]:
        trainable, total = trainable_parameters(model)
        return {f"{prefix}/trainable_params": trainable, f"{prefix}/params": total}

    def _fit(
        self, module: L.LightningModule, datamodule: L.LightningDataModule, s: Any, name: str, metrics: dict[str, Any], prefix: str,
        validate_first: bool = False,
    ) -> tuple[L.Trainer, float]:
        """Train ``module`` with dropout ``s.dropout``; adds ``prefix`` metrics; returns the trainer and fit seconds."""
        L.seed_everything(s.seed, workers=True, verbose=False)
        previous = set_dropout(module.model, s.dropout) if s.dropout is not None else {}
        trainer = self.trainer_factory(
            max_epochs=s.max_epochs,
            accumulate_grad_batches=self._accumulation(s, name),
            logger=self.tracker.logger if self.tracker.logger is not None else False,
            default_root_dir=str(self.run_dir / name),
            enable_checkpointing=False,
            limit_val_batches=None if validate_first else 0,
            use_distributed_sampler=False,  # SFTDataModule shards by rank itself (length-grouped batches included)
        )
        if validate_first:
            metrics[f"{prefix}/val_loss_before"] = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/val_loss"])
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - started
        restore_dropout(module.model, previous)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(prefix)})
        return trainer, seconds

    # -- evaluation after each model (paper Sec. 4.2) ---------------------------------------------
    def stage_eval(self, t: int) -> tuple[dict[str, Any], list[str]]:
        """Judge quality and replies of M_t; head-to-head against M0 / M_{t-1} / a reference file."""
        settings: EvalSettings = self._require("evaluation")
        data_dir, out = self.run_dir / "data", self.run_dir / "eval" / f"m{t}"
        groups = read_jsonl(data_dir / "ranked_heldout.jsonl", RankedPrompt)
        prompts = evalsets.load_prompt_set(settings.h2h.prompts, read_jsonl(data_dir / "ift_heldout.jsonl", IFTExample))
        h2h = settings.h2h
        baseline = None
        if h2h.reference:
            baseline = reference_baseline(h2h.reference)
        elif t >= 1:
            against = 0 if h2h.against == "start" else t - 1
            baseline = reference_baseline(self.run_dir / "eval" / f"m{against}" / "replies.jsonl", f"M{against}")
        key, spec = f"m{t}", self.spec_m(t)
        result = evaluate_model(f"M{t}", key, spec, self.slot, out, settings, self.judge, groups, prompts, baseline, self.settings.seed)
        return {f"eval/m{t}/{k}": v for k, v in result.items()}, [str(out)]

    def write_eval_table(self) -> None:
        """``eval/table.md`` and ``eval/table`` in the summary and logger: a row per evaluated model."""
        summary = self.tracker.summary
        rows = []
        for stage in self.stages:
            if stage.startswith("eval/") and self.manifest.recorded(stage, self.fingerprints[stage]):
                prefix = stage + "/"
                rows.append((f"M{stage[len('eval/m'):]}", {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}))
        if rows:
            note = f"M0 = {getattr(self.model_spec, 'name', type(self.model_spec).__name__)}; run dir {self.run_dir}."
            columns, cells = write_table(self.run_dir / "eval" / "table.md", "Evaluation after each model", rows, note)
            self.tracker.log_table("eval/table", columns, cells)

    # -- one self-rewarding iteration -------------------------------------------------------------
    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter{t}"

    def _require(self, what: str) -> Any:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"the loop needs '{what}' settings for the self-rewarding iterations")
        return value

    def stage_prompts(self, t: int) -> tuple[dict[str, Any], list[str]]:
        settings: aift.PromptGenSettings = self._require("prompt_gen")
        out = self.iter_dir(t) / "prompts.jsonl"
        seed = self.settings.seed
        if settings.source == "pool":
            records, metrics = aift.pool_prompts(settings.pool_path, settings, seed, t)
        else:
            human = [ex.prompt for ex in read_jsonl(self.run_dir / "data" / "ift_train.jsonl", IFTExample)]
            earlier = [r.prompt for u in range(1, t) for r in read_jsonl(self.iter_dir(u) / "prompts.jsonl", PromptRecord)]
            spec = self.model_spec if settings.model is None else HFModelSpec(settings.model)
            model, tokenizer = self.load("m0" if settings.model is None else f"prompt:{settings.model}", spec)
            store = PartialJsonl(self.iter_dir(t) / "prompt_attempts.jsonl", PromptAttempt)
            records, metrics = aift.generate_prompts(model, tokenizer, human, earlier, settings, seed, t, store, self.hook)
            store.finish()
        if not records:
            self._no_pairs(
                f"iteration {t}: no prompt passed the filters ({metrics}); see {self.iter_dir(t) / 'prompt_attempts.jsonl'} "
                "for the rejected attempts and their reasons, and loosen prompt_gen.filters or raise prompt_gen.max_attempts"
            )
        write_jsonl(out, records)
        return aift.prefixed(f"iter{t}/prompts", metrics), [str(out)]

    def _no_pairs(self, reason: str) -> None:
        """Stop (``on_no_pairs=error``) or log and go on with nothing (``carry``)."""
        if self.settings.on_no_pairs == "error":
            raise NoPairsError(reason)
        log.warning("%s. iteration.on_no_pairs=carry: the next model is a copy of this one", reason)

    def stage_candidates(self, t: int) -> tuple[dict[str, Any], list[str]]:
        prompts = read_jsonl(self.iter_dir(t) / "prompts.jsonl", PromptRecord)
        model, tokenizer = self.load_m(t)
        store = PartialJsonl(self.iter_dir(t) / "candidates.jsonl", Candidate)
        aift.generate_candidates(model, tokenizer, prompts, self._require("generation"), self.settings.seed, t, store, self.hook)
        path = store.finish()
        return aift.prefixed(f"iter{t}/candidates", aift.candidate_metrics(read_jsonl(path, Candidate))), [str(path)]

    def stage_judgements(self, t: int) -> tuple[dict[str, Any], list[str]]:
        candidates = read_jsonl(self.iter_dir(t) / "candidates.jsonl", Candidate)
        model, tokenizer = self.load_m(t)
        store = PartialJsonl(self.iter_dir(t) / "judgements.jsonl", Judgement)
        aift.judge_candidates(model, tokenizer, candidates, self.judge, self.settings.seed, t, store, self.hook)
        path = store.finish()
        judgements = read_jsonl(path, Judgement)
        metrics = aift.judgement_metrics(judgements, self.judge.template)
        by_key = {(j.prompt_id, j.candidate): j for j in judgements}
        rows = []
        for c in candidates[:SAMPLE_ROWS]:
            j = by_key.get((c.prompt_id, c.candidate))
            rows.append([c.prompt_id, c.prompt, c.candidate, c.response, j.score if j else None, j.texts[0] if j and j.texts else ""])
        self.tracker.log_samples(f"iter{t}/judge/samples", ["prompt_id", "prompt", "candidate", "response", "score", "judge_text"], rows)
        return aift.prefixed(f"iter{t}/judge", metrics), [str(path)]

    def stage_pairs(self, t: int) -> tuple[dict[str, Any], list[str]]:
        d = self.iter_dir(t)
        candidates = read_jsonl(d / "candidates.jsonl", Candidate)
        judgements = read_jsonl(d / "judgements.jsonl", Judgement)
        selected, counts = select_pairs(candidates, judgements, self.pairs, t)
        dpo: DPOSettings = self._require("dpo")
        if self.peft.enabled:  # the reference is M_t with the adapter off, computed during DPO: no model here
            model, tokenizer = None, load_tokenizer(self.spec_m(t))
        else:
            model, tokenizer = self.slot.get(f"m{t}", self.spec_m(t), train=True)
            model.to(distributed.local_device())
        encoded, kept = [], []
        for chosen, rejected, cs, rs in selected:
            pair = encode_pair(tokenizer, chosen.prompt, chosen.response, rejected.response, dpo.max_length)
            if pair is None:
                counts["dropped/prompt_too_long"] = counts.get("dropped/prompt_too_long", 0) + 1
                continue
            encoded.append(pair)
            kept.append((chosen, rejected, cs, rs))
        if not kept:
            judged = aift.judgement_metrics(judgements, self.judge.template)
            self._no_pairs(
                f"iteration {t}: no usable preference pair from {len(candidates)} candidates ({counts}); judge parse-failure "
                f"rate {judged['parse_fail_rate']:.0%}, unscored replies {judged['unscored_replies']}. Read {d / 'judgements.jsonl'}: "
                "if the judge never writes 'Score: N', train M1 with more EFT data (sft.max_eft_examples, sft.max_epochs) or raise "
                "judge.sampling.max_new_tokens; if all scores tie, raise generation.num_candidates or judge.num_samples"
            )
            write_jsonl(d / "pairs.jsonl", [])
            counts["kept"] = 0
            return aift.prefixed(f"iter{t}/pairs", counts), [str(d / "pairs.jsonl")]
        if model is not None:
            with_ref = reference_logprobs(model, encoded, tokenizer.pad_token_id, dpo.ref_batch_size)
        else:
            with_ref = [dataclasses.replace(p, ref_chosen=None, ref_rejected=None) for p in encoded]
        records = [
            Pair(c.prompt_id, c.prompt, c.response, r.response, cs, rs, p.ref_chosen, p.ref_rejected)
            for (c, r, cs, rs), p in zip(kept, with_ref)
        ]
        path = d / "pairs.jsonl"
        write_jsonl(path, records)
        self.tracker.log_samples(
            f"iter{t}/pairs/samples", ["prompt_id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score"],
            [[p.prompt_id, p.prompt, p.chosen, p.rejected, p.chosen_score, p.rejected_score] for p in records],
        )
        counts["kept"] = len(records)
        # select_pairs counted these before prompts too long for dpo.max_length were dropped
        counts["chosen_tokens_mean"] = sum(c.num_tokens for c, _, _, _ in kept) / len(kept)
        counts["rejected_tokens_mean"] = sum(r.num_tokens for _, r, _, _ in kept) / len(kept)
        counts["mean_margin"] = sum(p.chosen_score - p.rejected_score for p in records) / len(records)
        template = self.judge.template
        counts["mean_margin_frac"] = counts["mean_margin"] / (template.max_score - template.min_score)  # comparable across formats
        return aift.prefixed(f"iter{t}/pairs", counts), [str(path)]

    def stage_dpo(self, t_next: int) -> tuple[dict[str, Any], list[str]]:
        t = t_next - 1
        dpo: DPOSettings = self._require("dpo")
        pairs = read_jsonl(self.iter_dir(t) / "pairs.jsonl", Pair)
        if not pairs:  # iteration.on_no_pairs=carry let an iteration without pairs through: M_{t+1} = M_t
            folder = self.model_folder(t_next)
            if self.peft.save == "adapter":  # no adapter: M_{t+1} is the chain of M_t (spec_m skips an empty folder)
                distributed.on_main(lambda: folder.mkdir(parents=True, exist_ok=True))
            else:
                distributed.on_main(lambda: link_or_copy(self.model_folder(t), folder))
            log.warning("M%d is a copy of M%d: iteration %d has no preference pair", t_next, t, t)
            return {f"m{t_next}/dpo/pairs": 0, f"m{t_next}/dpo/skipped": 1}, [str(folder)]
        model, tokenizer = self.load_train(t)
        encoded = []
        for p in pairs:
            pair = encode_pair(tokenizer, p.prompt, p.chosen, p.rejected, dpo.max_length)
            if pair is None:  # the pairs stage kept only pairs that fit dpo.max_length with this tokenizer
                raise ValueError(f"pair {p.prompt_id} no longer fits dpo.max_length={dpo.max_length}; rerun the pairs stage")
            encoded.append(dataclasses.replace(pair, ref_chosen=p.ref_chosen_logp, ref_rejected=p.ref_rejected_logp))
        prefix = f"m{t_next}/dpo"
        metrics: dict[str, Any] = {f"{prefix}/pairs": len(encoded), **self._trainable(prefix, model)}
        module = DPOModule(model, dpo, metric_prefix=prefix)
        datamodule = SFTDataModule(encoded, [], dpo.micro_batch_size, tokenizer.pad_token_id, dpo.seed, collate=collate_pairs,
                                   group_by_length=dpo.group_by_length)
        trainer, _ = self._fit(module, datamodule, dpo, f"m{t_next}", metrics, prefix)
        metrics[f"{prefix}/steps"] = trainer.global_step
        return metrics, [str(self.save(model, tokenizer, t_next, trainer))]
