"""Run by tests/integration/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

``generate OUT``: candidates and judgements of the tiny model (float64) through the generation and judging functions.
``sft OUT`` / ``dpo OUT``: two epochs of DDP on two examples (one per rank); rank 0 saves the weights.
The test runs the same functions in one process and compares.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import functools  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from srl.core import distributed  # noqa: E402
from srl.data.partial import PartialJsonl
from srl.data.records import Candidate, IFTExample, Judgement, PromptRecord, read_jsonl
from srl.generation.candidates import CandidateSettings, generate_candidates
from srl.generation.sampling import SamplingSettings  # noqa: E402
from srl.judging.pointwise import judge_candidates
from srl.judging.settings import JudgeSettings
from srl.judging.templates import load_judge_template  # noqa: E402
from srl.training.dpo import DPOModule, DPOSettings, collate_pairs, encode_pair, reference_logprobs  # noqa: E402
from srl.training.encoding import encode_sft  # noqa: E402
from srl.training.sft import SFTDataModule, SFTModule, SFTSettings  # noqa: E402
from srl.training.strategies import trainer as make_trainer  # noqa: E402
from srl.training.tiny import TinyModelSpec  # noqa: E402

PROMPTS = ["Name a primary colour.", "What is two plus two?", "Say hello in French.", "Give a fruit that is yellow.", "Count to three."]
SFT_DATA = [("Name a primary colour.", "Red is a primary colour."), ("What is two plus two?", "Two plus two is four, always.")]
DPO_DATA = [("Name a primary colour.", "Red is a primary colour.", "I like turtles."), ("What is two plus two?", "Two plus two is four.", "No.")]


def generate(out: Path) -> None:
    """Candidates (N=3) and judgements (K=2) of five prompts; float64 so batch composition cannot
    change a sampled token through rounding."""
    import srl.generation.sample as generation

    counted = {"rows": 0}
    local = generation._sample_local

    def counting(model, tokenizer, prompts, *args):  # rows this rank generated itself
        counted["rows"] += len(prompts)
        return local(model, tokenizer, prompts, *args)

    generation._sample_local = counting
    model, tok = TinyModelSpec(seed=0).load()
    model = model.double()
    sampling = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=12, batch_size=4)
    prompts = [PromptRecord(f"p{i}", p, "test") for i, p in enumerate(PROMPTS)]
    store = PartialJsonl(out / "candidates.jsonl", Candidate)
    generate_candidates(model, tok, prompts, CandidateSettings(3, sampling), 0, 1, store)
    candidates = read_jsonl(store.finish(), Candidate)
    store = PartialJsonl(out / "judgements.jsonl", Judgement)
    judge = JudgeSettings(load_judge_template(), num_samples=2, sampling=SamplingSettings(temperature=0.7, top_p=0.9, max_new_tokens=10, batch_size=4))
    judge_candidates(model, tok, candidates, judge, 0, 1, store)
    store.finish()
    generation._sample_local = local
    (out / f"rows.rank{distributed.rank()}").write_text(str(counted["rows"]))


def train(kind: str, out: Path, devices: int) -> None:
    """Two optimizer steps on two examples: one process accumulates both, DDP gives one to each rank."""
    model, tok = TinyModelSpec(seed=0).load()
    # SGD: the update is proportional to the gradient. AdamW's is about +-lr for any gradient, so the
    # float noise of a different reduction order (1e-9 on a near-zero gradient) moved weights by 6e-5.
    opt = functools.partial(torch.optim.SGD, lr=1.0)
    micro, accumulate = 1, 2 // devices
    if kind == "sft":
        ift = [IFTExample(prompt=p, response=r, tree_id=str(i), message_id=str(i)) for i, (p, r) in enumerate(SFT_DATA)]
        data, _ = encode_sft(tok, ift, [], max_length=128)
        module = SFTModule(model, SFTSettings(optimizer=opt, batch_size=2, micro_batch_size=1, max_epochs=2, dropout=0.0))
        datamodule = SFTDataModule(data, [], micro, tok.pad_token_id, seed=0)
    else:
        pairs = [encode_pair(tok, p, c, r, 128) for p, c, r in DPO_DATA]
        pairs = reference_logprobs(model, pairs, tok.pad_token_id, batch_size=1)
        module = DPOModule(model, DPOSettings(optimizer=opt, batch_size=2, micro_batch_size=1, max_epochs=2, dropout=0.0))
        datamodule = SFTDataModule(pairs, [], micro, tok.pad_token_id, seed=0, collate=collate_pairs)
    strategy = {"name": "ddp", "process_group_backend": "gloo"} if devices > 1 else "auto"
    trainer = make_trainer(
        strategy=strategy, accelerator="cpu", devices=devices, max_epochs=2, accumulate_grad_batches=accumulate, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=datamodule)
    if distributed.is_main():
        losses = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save({"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "steps": trainer.global_step, "metrics": losses}, out / f"{kind}.pt")
    distributed.barrier()


if __name__ == "__main__":
    task, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    distributed.init_from_env()
    if task == "generate":
        generate(out)
    else:
        train(task, out, distributed.world_size())
    if distributed.is_main():
        (out / f"{task}.world").write_text(str(distributed.world_size()))
