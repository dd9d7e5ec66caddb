"""One self-rewarding iteration (paper Sec. 3.2-3.3): prompts, candidates, judgements, pairs, DPO.

``IterationStages`` holds the stages of iteration t as methods of ``loop.SelfRewardingLoop``, which
supplies the run directory, the settings, the model slot and the training helpers (``load_m``,
``load_train``, ``save``, ``_fit``). Each stage reads the files of the one before and returns its
metrics and outputs for the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from srl import aift, distributed, rundir
from srl.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, reference_logprobs
from srl.models import HFModelSpec, load_tokenizer
from srl.pairs import select_pairs, truncation_counts
from srl.records import Candidate, Judgement, Pair, PartialJsonl, PromptAttempt, PromptRecord, IFTExample, read_jsonl, write_jsonl
from srl.sft import SFTDataModule
from srl.rundir import link_or_copy
from srl.tracking import SAMPLE_ROWS

log = logging.getLogger(__name__)


class NoPairsError(RuntimeError):
    """An iteration produced no usable preference pair; training on nothing is refused."""


class IterationStages:
    """The stages of iteration t, mixed into ``SelfRewardingLoop``."""

    run_dir: Path
    stamp: Any  # SelfRewardingLoop.stamp

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
        seed, outputs = self.settings.seed, []
        if settings.source == "pool":
            records, metrics = aift.pool_prompts(settings.pool_path, settings, seed, t)
        else:
            human = [ex.prompt for ex in read_jsonl(self.run_dir / "data" / "ift_train.jsonl", IFTExample)]
            earlier = [r.prompt for u in range(1, t) for r in read_jsonl(self.iter_dir(u) / "prompts.jsonl", PromptRecord)]
            # the half-finished attempts of another config are refused before a model loads
            store = PartialJsonl(self.iter_dir(t) / "prompt_attempts.jsonl", PromptAttempt, self.stamp(f"iter{t}/prompts"))
            spec = self.model_spec if settings.model is None else HFModelSpec(settings.model)
            model, tokenizer = self.load("m0" if settings.model is None else f"prompt:{settings.model}", spec)
            records, metrics = aift.generate_prompts(model, tokenizer, human, earlier, settings, seed, t, store, self.hook)
            outputs.append(str(store.finish()))
        if not records:
            self._no_pairs(
                f"iteration {t}: no prompt passed the filters ({metrics}); see {self.iter_dir(t) / 'prompt_attempts.jsonl'} "
                "for the rejected attempts and their reasons, and loosen prompt_gen.filters or raise prompt_gen.max_attempts"
            )
        write_jsonl(out, records)
        return aift.prefixed(f"iter{t}/prompts", metrics), [str(out), *outputs]

    def _no_pairs(self, reason: str) -> None:
        """Stop (``on_no_pairs=error``) or log and go on with nothing (``carry``)."""
        if self.settings.on_no_pairs == "error":
            raise NoPairsError(reason)
        log.warning("%s. iteration.on_no_pairs=carry: the next model is a copy of this one", reason)

    def stage_candidates(self, t: int) -> tuple[dict[str, Any], list[str]]:
        prompts = read_jsonl(self.iter_dir(t) / "prompts.jsonl", PromptRecord)
        store = PartialJsonl(self.iter_dir(t) / "candidates.jsonl", Candidate, self.stamp(f"iter{t}/candidates"))
        model, tokenizer = self.load_m(t)
        aift.generate_candidates(model, tokenizer, prompts, self._require("generation"), self.settings.seed, t, store, self.hook)
        path = store.finish()
        return aift.prefixed(f"iter{t}/candidates", aift.candidate_metrics(read_jsonl(path, Candidate))), [str(path)]

    def stage_judgements(self, t: int) -> tuple[dict[str, Any], list[str]]:
        candidates = read_jsonl(self.iter_dir(t) / "candidates.jsonl", Candidate)
        store = PartialJsonl(self.iter_dir(t) / "judgements.jsonl", Judgement, self.stamp(f"iter{t}/judgements"))
        model, tokenizer = self.load_m(t)
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
            pair = encode_pair(tokenizer, chosen.prompt, chosen.response, rejected.response, dpo.max_length, chosen.finished, rejected.finished)
            if pair is None:
                counts["dropped/prompt_too_long"] = counts.get("dropped/prompt_too_long", 0) + 1
                continue
            encoded.append(pair)
            kept.append((chosen, rejected, cs, rs))
        counts.update(truncation_counts(candidates, kept))  # of the pairs that fit dpo.max_length
        if not kept:
            judged = aift.judgement_metrics(judgements, self.judge.template)
            self._no_pairs(
                f"iteration {t}: no usable preference pair from {len(candidates)} candidates ({counts}); judge parse-failure "
                f"rate {judged['parse_fail_rate']:.0%}, unscored replies {judged['unscored_replies']}. Read {d / 'judgements.jsonl'}: "
                "if the judge never writes 'Score: N', train M1 with more EFT data (sft.max_eft_examples, sft.max_epochs) or raise "
                "judge.sampling.max_new_tokens; if all scores tie, raise generation.num_candidates or judge.num_samples; "
                f"if replies are cut at max_new_tokens ({counts['truncated_candidates']} truncated candidates, "
                f"{counts['dropped/truncated']} prompts dropped by pairs.truncated={self.pairs.truncated}), raise "
                "generation.sampling.max_new_tokens"
            )
            write_jsonl(d / "pairs.jsonl", [])
            counts["kept"] = 0
            return aift.prefixed(f"iter{t}/pairs", counts), [str(d / "pairs.jsonl")]
        if model is not None:
            with_ref = reference_logprobs(model, encoded, tokenizer.pad_token_id, dpo.ref_batch_size)
        else:
            with_ref = [dataclasses.replace(p, ref_chosen=None, ref_rejected=None) for p in encoded]
        records = [
            Pair(c.prompt_id, c.prompt, c.response, r.response, cs, rs, p.ref_chosen, p.ref_rejected, c.finished, r.finished)
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
                distributed.on_main(lambda: rundir.check(folder).mkdir(parents=True, exist_ok=True))
            else:
                distributed.on_main(lambda: link_or_copy(self.model_folder(t), folder))
            log.warning("M%d is a copy of M%d: iteration %d has no preference pair", t_next, t, t)
            return {f"m{t_next}/dpo/pairs": 0, f"m{t_next}/dpo/skipped": 1}, [str(folder)]
        model, tokenizer = self.load_train(t)
        encoded = []
        for p in pairs:
            pair = encode_pair(tokenizer, p.prompt, p.chosen, p.rejected, dpo.max_length, p.chosen_finished, p.rejected_finished)
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
        folder = self.save(model, tokenizer, t_next, trainer)
        self.progress.finish()
        return metrics, [str(folder)]
