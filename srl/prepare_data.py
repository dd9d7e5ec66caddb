"""Build IFT, EFT and the held-out split from an oasst1 source and print their counts.

    python -m srl.prepare_data data=oasst_local data.source.path=../shared/data/oasst1/en_validation.jsonl

Writes ``ift_train.jsonl``, ``eft_train.jsonl``, ``ift_heldout.jsonl``, ``ranked_heldout.jsonl``,
``heldout_tree_ids.json`` and ``counts.json`` to the Hydra run dir (``hydra.run.dir=DIR`` chooses it).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from srl.config.paths import CONF_DIR, register_resolvers
from srl.core import rundir
from srl.generation.sample import sample_texts
from srl.training.sft_data import compose

register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> dict[str, int]:
    from srl.config.validation import validate_config

    validate_config(cfg)  # before any data is read or model loaded (srl/config/validation.py)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    source = instantiate(cfg.data.source)
    settings = instantiate(cfg.data.build)
    template = instantiate(cfg.judge).template
    judge_fn = None
    if settings.eft_mode == "paper":
        model, tokenizer = instantiate(cfg.model).load()
        sampling = instantiate(cfg.data.eft_sampling)

        def judge_fn(prompts, seeds):
            return sample_texts(model, tokenizer, prompts, seeds, sampling)

    result = compose(source, instantiate(cfg.data.get("instructions")), instantiate(cfg.data.get("eft_rows")), settings, template, judge_fn)
    with rundir.working_in(out_dir):  # writes stay in the output dir (srl/core/rundir.py)
        result.write(out_dir)
    print(f"source: {source.describe() if source is not None else '-'}  ->  {out_dir}")
    for key, value in result.counts.items():
        print(f"  {key:<40} {value}")
    return result.counts


if __name__ == "__main__":
    main()
