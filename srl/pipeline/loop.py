"""The self-rewarding loop over a run directory (paper Sec. 3, Fig. 1).

Stages, each reading the files of the one before and recorded in ``manifest.json`` when complete:
``data`` (IFT/EFT/held-out files) -> ``m1`` (SFT of M0 on IFT+EFT) -> for t = 1..T-1:
``iter{t}/prompts`` -> ``iter{t}/candidates`` -> ``iter{t}/judgements`` -> [``iter{t}/meta``, with
``meta.enabled``: Meta-Rewarding's judge pairs] -> ``iter{t}/pairs`` (with the reference log-probs of M_t) -> ``m{t+1}`` (DPO of M_t); each stage is a function in
``srl/pipeline/stages/``. Models are ``save_pretrained`` folders at ``m{t}/model`` (or adapters at
``m{t}/adapter``, ``conf/peft``). With ``eval.in_loop``, an ``eval/m{t}`` stage follows the data (M0,
the starting model) and every model, and the run ends with ``eval/table.md``: a row per model.
In a multi-process run every rank runs these stages; rank 0 writes (``srl/core/distributed.py``).
``SelfRewardingLoop`` decides which stages run (finished ones are skipped or adopted from
``reuse_from``, ``srl/pipeline/manifest.py``) and calls them.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L

from srl.core import distributed, rundir
from srl.core.progress import ChunkHook
from srl.core.rundir import Stamp
from srl.data.preference_sets import load_preference_set
from srl.evaluation.model_eval import EvalSettings
from srl.generation.candidates import CandidateSettings
from srl.generation.prompts import PromptGenSettings
from srl.generation.slot import ModelSlot
from srl.judging.meta_judging import MetaSettings
from srl.judging.settings import JudgeSettings
from srl.pipeline.context import NoPairsError, RunModels, StageContext, StageResult  # noqa: F401  (NoPairsError: part of the loop's API)
from srl.pipeline import model_card
from srl.pipeline.manifest import Manifest, find_manifests
from srl.pipeline.model_card import HubSettings
from srl.pipeline.stages.data import DataSettings, run_data
from srl.pipeline.stages.dpo import run_dpo
from srl.pipeline.stages.evaluation import run_eval, write_eval_table
from srl.pipeline.stages.iteration import run_candidates, run_judgements, run_pairs, run_prompts
from srl.pipeline.stages.meta import run_meta
from srl.pipeline.stages.online import check_online, run_online
from srl.pipeline.stages.sft import run_sft
from srl.pipeline.tracking import Tracker
from srl.training.adapters import PeftSettings
from srl.training.dpo import DPOSettings
from srl.training.pairs import PairSettings
from srl.training.sft import SFTSettings

log = logging.getLogger(__name__)
MODEL_STAGE = re.compile(r"m[1-9][0-9]*")  # m1 (SFT), m2, m3, ... (DPO): the stages that save a model

ITERATION_STAGES = ("prompts", "candidates", "judgements", "pairs")


def stage_names(num_models: int, evaluate: bool = False, meta: bool = False, online: bool = False) -> list[str]:
    """The run's stages in order; with ``evaluate``, ``eval/m{t}`` after the data (M0) and each model; with ``meta``
    (Meta-Rewarding), ``iter{t}/meta`` between the judgements and the pairs; ``online`` (semi-online,
    ``iteration.sync_every``): ``iter{t}/prompts`` then ``m{t+1}``, which answers, judges, pairs and trains in chunks."""
    names = ["data"] + (["eval/m0"] if evaluate else []) + ["m1"] + (["eval/m1"] if evaluate else [])
    kinds = [*ITERATION_STAGES[:3], *(["meta"] if meta else []), ITERATION_STAGES[3]] if not online else ["prompts"]
    for t in range(1, num_models):
        names += [f"iter{t}/{s}" for s in kinds] + [f"m{t + 1}"] + ([f"eval/m{t + 1}"] if evaluate else [])
    return names


@dataclasses.dataclass
class LoopSettings:
    """``num_models``: M1..M_T (paper: 3); ``stop_after``: the last stage to run (None: all);
    ``reuse_from``: a folder of earlier runs whose finished stages with the same config are linked
    instead of run (a sweep over a later stage); ``on_no_pairs``: what an iteration without a usable
    prompt or pair does: ``error`` (stop with the reason) or ``carry`` (log it, count it, and make
    M_{t+1} a copy of M_t, so a sweep job whose judge never parses still finishes and shows 0 pairs);
    ``checkpoint_every_n_steps``: a training stage (SFT, DPO) saves a resumable checkpoint this often
    (optimizer steps) and at each epoch's end, 0: never; ``keep_checkpoints``: keep it after the stage;
    ``sync_every``: None (offline: M_t makes all of iteration t's records, then M_{t+1} trains) or s >= 1
    (semi-online: the policy generates and judges the next chunk of prompts every s optimizer steps,
    ``srl/pipeline/stages/online.py``)."""

    num_models: int = 3
    stop_after: str | None = None
    seed: int = 0
    reuse_from: str | None = None
    on_no_pairs: str = "error"
    checkpoint_every_n_steps: int = 20
    keep_checkpoints: bool = False
    sync_every: int | None = None

    def __post_init__(self) -> None:
        if self.sync_every is not None and (isinstance(self.sync_every, bool) or not isinstance(self.sync_every, int) or self.sync_every < 1):
            raise ValueError(f"iteration.sync_every must be an integer >= 1 (optimizer steps between syncs) or null (offline), got {self.sync_every!r}")
        if self.num_models < 1:
            raise ValueError(f"iteration.num_models must be >= 1, got {self.num_models}")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(f"iteration.checkpoint_every_n_steps must be >= 0 (0: no checkpoints), got {self.checkpoint_every_n_steps}")
        if self.on_no_pairs not in ("error", "carry"):
            raise ValueError(f"iteration.on_no_pairs must be 'error' or 'carry', got {self.on_no_pairs!r}")
        names = stage_names(self.num_models, evaluate=True, meta=True)  # every stage any mode has (semi-online: a subset)
        if self.stop_after is not None and self.stop_after not in names:
            raise ValueError(f"iteration.stop_after={self.stop_after!r} is not a stage of this run; stages: {names}")


class SelfRewardingLoop:
    """The stages of one run over ``run_dir``, with the settings each needs (``srl.run.build_loop``)."""

    def __init__(
        self,
        run_dir: str | Path,
        model: Any,
        data: DataSettings,
        judge: JudgeSettings,
        sft: SFTSettings,
        trainer_factory: Callable[..., L.Trainer],
        loop: LoopSettings,
        fingerprints: dict[str, str],
        tracker: Tracker,
        stage_configs: dict[str, dict[str, Any]] | None = None,
        prompt_gen: PromptGenSettings | None = None,
        generation: CandidateSettings | None = None,
        dpo: DPOSettings | None = None,
        evaluation: EvalSettings | None = None,
        pairs: PairSettings | None = None,
        hook: ChunkHook | None = None,
        peft: PeftSettings | None = None,
        backend: Any | None = None,
        hub: HubSettings | None = None,
        command: str = "python -m srl.run",
        meta: MetaSettings | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.data, self.judge, self.sft = data, judge, sft
        self.prompt_gen, self.generation, self.dpo = prompt_gen, generation, dpo
        self.settings, self.fingerprints, self.tracker = loop, fingerprints, tracker
        self.stage_configs = stage_configs or {}  # the values each fingerprint covers: errors say which keys changed
        self.pairs = pairs if pairs is not None else PairSettings(seed=loop.seed)
        self.evaluation = evaluation if evaluation is not None and evaluation.in_loop else None
        self.meta = meta if meta is not None and meta.enabled else None
        if self.meta is not None:
            self.meta.check(judge)  # a judge whose judgements cannot be meta-judged stops here, before any model loads
        check_online(loop.sync_every, backend, peft, self.meta, self.pairs, dpo)  # semi-online's limits, before any model loads
        self.stages = stage_names(loop.num_models, self.evaluation is not None, self.meta is not None, loop.sync_every is not None)
        self.hub, self.command = hub if hub is not None else HubSettings(), command
        for pref in [*(self.evaluation.preference_sets if self.evaluation else ()), *self.pairs.extra]:
            load_preference_set(pref)  # a malformed preference set stops here (file, line, field), before any model loads
        if loop.stop_after is not None and loop.stop_after not in self.stages:
            raise ValueError(f"iteration.stop_after={loop.stop_after!r} is not a stage of this run (eval.in_loop is off); stages: {self.stages}")
        self.manifest = Manifest(self.run_dir)  # an unreadable manifest stops here, before any model loads
        self.models = RunModels(self.run_dir, model, peft if peft is not None else PeftSettings(), ModelSlot(backend, distributed.local_device()))
        self.ctx = StageContext(
            self.run_dir, self.models, tracker, self.stamp, loop.seed, trainer_factory,
            loop.checkpoint_every_n_steps, loop.keep_checkpoints, loop.on_no_pairs, hook,
        )

    @property
    def hook(self) -> ChunkHook | None:
        """Called after each generation chunk with (stage kind, records so far); tests stop a run with it."""
        return self.ctx.hook

    @hook.setter
    def hook(self, value: ChunkHook | None) -> None:
        self.ctx.hook = value

    def spec_m(self, t: int) -> Any:
        """How M_t loads (``RunModels.spec``)."""
        return self.models.spec(t)

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
                if MODEL_STAGE.fullmatch(stage) and self.hub.model_card:
                    distributed.on_main(lambda: self.write_card(int(stage[1:]), fingerprint))  # a file of the model folder: before record
                self.manifest.record(stage, stamp, metrics, outputs)
                distributed.barrier()  # the stage's files are complete before any rank reads them
            if stage == self.settings.stop_after:
                break

    def write_card(self, t: int, fingerprint: str) -> Path | None:
        """``m{t}/model/README.md``: what M_t is and how it was made (``srl.pipeline.model_card``)."""
        folder = self.models.folder(t)
        if not folder.is_dir():
            return None
        return model_card.write_card(folder, t, model_card.base_name(self.models.start), self.data.describe(), self.tracker.summary,
                                     self.command, fingerprint)

    def model_folders(self) -> dict[int, Path]:
        """The saved M_t folders of the run (t >= 1)."""
        return {t: self.models.folder(t) for t in range(1, self.settings.num_models + 1) if self.models.folder(t).is_dir()}

    def run_stage(self, stage: str) -> StageResult:
        ctx = self.ctx
        if stage == "data":
            return run_data(ctx, self.data, self.judge)
        if stage == "m1":
            return run_sft(ctx, self.sft, self.judge)
        if stage.startswith("eval/"):
            return run_eval(ctx, int(stage[len("eval/m"):]), self._require("evaluation"), self.judge)
        if stage.startswith("iter"):
            head, kind = stage.split("/")
            t = int(head[4:])
            if kind == "prompts":
                return run_prompts(ctx, t, self._require("prompt_gen"))
            if kind == "candidates":
                return run_candidates(ctx, t, self._require("generation"))
            if kind == "judgements":
                return run_judgements(ctx, t, self.judge)
            if kind == "meta":
                return run_meta(ctx, t, self._require("meta"), self.judge)
            return run_pairs(ctx, t, self.pairs, self._require("dpo"), self.judge, meta=self.meta is not None)
        if self.settings.sync_every is not None:
            return run_online(ctx, int(stage[1:]), self._require("generation"), self.judge, self.pairs, self._require("dpo"), self.settings.sync_every)
        return run_dpo(ctx, int(stage[1:]), self._require("dpo"), self.judge)

    def _require(self, what: str) -> Any:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"the loop needs '{what}' settings for the self-rewarding iterations")
        return value

    def write_eval_table(self) -> None:
        evaluated = [s for s in self.stages if s.startswith("eval/") and self.manifest.recorded(s, self.fingerprints[s])]
        write_eval_table(self.ctx, evaluated)
