"""The self-rewarding loop over a run directory (paper Sec. 3, Fig. 1).

Stages, each reading the files of the one before and recorded in ``manifest.json`` when complete:
``data`` (IFT/EFT/held-out files) -> ``m1`` (SFT of M0 on IFT+EFT) -> for t = 1..T-1:
``iter{t}/prompts`` -> ``iter{t}/candidates`` -> ``iter{t}/judgements`` -> ``iter{t}/pairs``
(with the reference log-probs of M_t) -> ``m{t+1}`` (DPO of M_t); the iteration's stages are in
``srl/iteration.py``. Models are ``save_pretrained`` folders at ``m{t}/model`` (or adapters at
``m{t}/adapter``, ``conf/peft``). With ``eval.in_loop``, an ``eval/m{t}`` stage follows the data (M0,
the starting model) and every model, and the run ends with ``eval/table.md``: a row per model.
In a multi-process run every rank runs these stages; rank 0 writes (``srl/distributed.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L

from srl import aift, distributed, evalsets, oasst, rundir
from srl.adapters import AdapterChainSpec, PeftSettings, TrainingModelSpec, save_trained, trainable_parameters
from srl.evaluate import EvalSettings, evaluate_model, reference_baseline
from srl.report import write_table
from srl.chat import encode_sft
from srl.dpo import DPOSettings
from srl.generation import SamplingSettings, sample_texts
from srl.iteration import IterationStages, NoPairsError  # noqa: F401  (NoPairsError: part of the loop's API)
from srl.models import HFModelSpec, ModelSlot
from srl.pairs import PairSettings
from srl.records import EFTExample, IFTExample, RankedPrompt, read_jsonl
from srl.sft import SFTDataModule, SFTModule, SFTSettings, cap, restore_dropout, set_dropout
from srl.rundir import Stamp
from srl.stages import Manifest, find_manifests
from srl.steps import StageProgress
from srl.strategies import full_state_dict
from srl.tracking import Tracker

log = logging.getLogger(__name__)

ITERATION_STAGES = ("prompts", "candidates", "judgements", "pairs")


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
    M_{t+1} a copy of M_t, so a sweep job whose judge never parses still finishes and shows 0 pairs);
    ``checkpoint_every_n_steps``: a training stage (SFT, DPO) saves a resumable checkpoint this often
    (optimizer steps) and at each epoch's end, 0: never; ``keep_checkpoints``: keep it after the stage."""

    num_models: int = 3
    stop_after: str | None = None
    seed: int = 0
    reuse_from: str | None = None
    on_no_pairs: str = "error"
    checkpoint_every_n_steps: int = 20
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        if self.num_models < 1:
            raise ValueError(f"iteration.num_models must be >= 1, got {self.num_models}")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(f"iteration.checkpoint_every_n_steps must be >= 0 (0: no checkpoints), got {self.checkpoint_every_n_steps}")
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


class SelfRewardingLoop(IterationStages):
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
        stage_configs: dict[str, dict[str, Any]] | None = None,
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
        self.stage_configs = stage_configs or {}  # the values each fingerprint covers: errors say which keys changed
        self.hook = hook
        self.pairs = pairs if pairs is not None else PairSettings(seed=loop.seed)
        self.evaluation = evaluation if evaluation is not None and evaluation.in_loop else None
        self.stages = stage_names(loop.num_models, self.evaluation is not None)
        if loop.stop_after is not None and loop.stop_after not in self.stages:
            raise ValueError(f"iteration.stop_after={loop.stop_after!r} is not a stage of this run (eval.in_loop is off); stages: {self.stages}")
        self.manifest = Manifest(self.run_dir)  # an unreadable manifest stops here, before any model loads
        self.peft = peft if peft is not None else PeftSettings()
        self.slot = ModelSlot(backend, distributed.local_device())

    def run(self) -> dict[str, Any]:
        """Run every stage not finished yet; ``summary.json`` is written at the end, and also when a
        stage fails (with ``status`` saying where and why), so a failed job of a sweep keeps its metrics."""
        self.tracker.summary["status"] = "running"
        try:
            with rundir.working_in(self.run_dir):  # every write, move and delete stays inside the run dir
                self._run_stages()
        except Exception as exc:
            failed = next((s for s in self.stages if s not in self.manifest.data["stages"]), "?")
            self.tracker.summary["status"] = f"failed at {failed}: {type(exc).__name__}: {exc}"
            self.tracker.write_summary()
            raise
        self.tracker.summary["status"] = "ok"
        with rundir.working_in(self.run_dir):
            self.write_eval_table()
        self.tracker.write_summary()
        return self.tracker.summary

    def stamp(self, stage: str) -> Stamp:
        """``stage`` under this run's config: its fingerprint and the values it covers."""
        return Stamp(stage, self.fingerprints[stage], self.stage_configs.get(stage, {}))

    def _run_stages(self) -> None:
        # Reuse is for a prefix of the run: once a stage runs here, later ones run here too.
        sources = find_manifests(self.settings.reuse_from, self.run_dir) if self.settings.reuse_from else []
        for stage in self.stages:
            fingerprint, stamp = self.fingerprints[stage], self.stamp(stage)
            if sources and stage not in self.manifest.data["stages"]:
                adopted = self.manifest.adopt(stage, stamp, sources)
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
                    distributed.on_main(lambda: rundir.remove(output))
            if self.manifest.done(stage, stamp):
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
                self.manifest.record(stage, stamp, metrics, outputs)
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
            rundir.remove(tmp)
            result.write(rundir.check(tmp))
            rundir.replace(tmp, out)

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
        folder = self.save(model, tokenizer, 1, trainer)
        self.progress.finish()
        return metrics, [str(folder)]

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
        """Train ``module`` with dropout ``s.dropout``, resuming from the stage's checkpoint if a run
        was stopped in it; adds the stage statistics of ``prefix`` (``steps.summarize``) to ``metrics``;
        returns the trainer and fit seconds. Call ``self.progress.finish()`` once the model is saved."""
        L.seed_everything(s.seed, workers=True, verbose=False)
        previous = set_dropout(module.model, s.dropout) if s.dropout is not None else {}
        self.progress = progress = StageProgress(
            self.run_dir / name, prefix, self.settings.checkpoint_every_n_steps, self.stamp(name), self.settings.keep_checkpoints,
        )
        trainer = self.trainer_factory(
            max_epochs=s.max_epochs,
            accumulate_grad_batches=self._accumulation(s, name),
            logger=self.tracker.logger if self.tracker.logger is not None else False,
            default_root_dir=str(self.run_dir / name),
            enable_checkpointing=False,  # steps.StageProgress saves the stage's checkpoints
            callbacks=[progress],
            limit_val_batches=None if validate_first else 0,
            use_distributed_sampler=False,  # SFTDataModule shards by rank itself (length-grouped batches included)
        )
        if validate_first:
            metrics[f"{prefix}/val_loss_before"] = float(trainer.validate(module, datamodule=datamodule, verbose=False)[0][f"{prefix}/val_loss"])
        ckpt = progress.resume_path()
        if ckpt is not None:
            log.info("stage %s: resuming from checkpoint %s", name, ckpt)
        started = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None, weights_only=True)
        seconds = time.perf_counter() - started
        restore_dropout(module.model, previous)
        metrics.update(progress.summary())
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k == f"{prefix}/val_loss"})
        if ckpt is not None:
            metrics[f"{prefix}/resumed_at_step"] = progress.start_step
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
        result = evaluate_model(f"M{t}", key, spec, self.slot, out, settings, self.judge, groups, prompts, baseline, self.settings.seed,
                                stamp=self.stamp(f"eval/m{t}"))
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
