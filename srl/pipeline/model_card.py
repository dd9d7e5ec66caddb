"""Model folders a user can share: a model card per saved M_t, and pushing them to the Hub.

``write_card`` writes ``m{t}/model/README.md`` when the stage that trained M_t finishes, before the
stage is recorded (the card is one of the folder's files, with its checksum): the base model, the
data, what the stage did (SFT on IFT+EFT, or DPO on iteration t-1's pairs), its key metrics (stage
means and first/last values, as the summary has them), the run's command and the stage's config
fingerprint. Evaluation of M_t runs later, so the card points at ``eval/m{t}/`` instead of quoting it.

``push`` uploads the model folders to a Hub repo (``hub.push=true hub.repo_id=user/name``), one
subfolder per model (``m1/``, ``m2/``, ...), after the run; the config check refuses it offline.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from pathlib import Path
from typing import Any, Mapping, Sequence

from srl.core.rundir import atomic_write_text

log = logging.getLogger(__name__)

@dataclasses.dataclass
class HubSettings:
    """``hub``: a model card in every saved M_t folder, and pushing the folders to a Hub repo after the run."""

    model_card: bool = True
    push: bool = False
    repo_id: str | None = None  # user/name; M_t goes to its m{t}/ folder
    private: bool = True

    def __post_init__(self) -> None:
        if self.push and not self.repo_id:
            raise ValueError("hub.push=true needs hub.repo_id (user/name)")


# Metrics of a model's own stage shown on its card, by suffix after "m{t}/{sft|dpo}/" (those present).
# No timings: a card holds what the stage computed, the same for a resumed run as for an uninterrupted one.
SFT_KEYS = ("steps", "loss_first", "loss_mean", "loss_last", "val_loss_before", "val_loss", "data/ift_examples", "data/eft_examples",
            "select/chosen_step", "select/snapshots")
DPO_KEYS = ("steps", "pairs", "loss_first", "loss_mean", "loss_last", "rewards/accuracy_mean", "rewards/margin_mean",
            "select/chosen_step", "select/snapshots")
PAIR_KEYS = ("kept", "total", "mean_margin", "chosen_tokens_mean", "rejected_tokens_mean")


def base_name(spec: Any) -> str:
    """The starting model as a user would name it (a Hub id or path; the embedded SmolLM2; the tiny test model)."""
    for attr in ("name_or_path", "name"):
        value = getattr(spec, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(spec).__name__


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def card_text(t: int, base: str, data: str, summary: Mapping[str, Any], command: str, fingerprint: str) -> str:
    """The card of M_t (``t >= 1``) from the run's summary so far."""
    kind = "sft" if t == 1 else "dpo"
    prefix = f"m{t}/{kind}/"
    keys = SFT_KEYS if kind == "sft" else DPO_KEYS
    rows = [(f"{prefix}{k}", summary[f"{prefix}{k}"]) for k in keys if summary.get(f"{prefix}{k}") is not None]
    tags = ["srl", "self-rewarding", "sft" if kind == "sft" else "dpo"]
    head = "---\n" + f"base_model: {json.dumps(base)}\n" + "library_name: transformers\n" + "tags:\n" + "".join(f"- {x}\n" for x in tags) + "---\n"
    if kind == "sft":
        what = ("M1: supervised fine-tuning of the base model (M0) on instruction data (IFT) and judge-training data (EFT; the "
                "table counts the examples of each), "
                "Self-Rewarding Language Models (Yuan et al., 2024), Sec. 3.1.")
        data_lines = [f"- source: {data}"] + [f"- {k}: {summary[k]}" for k in ("data/ift_train", "data/eft_train", "data/ift_heldout")
                                               if summary.get(k) is not None]
    else:
        s = t - 1
        what = (f"M{t}: DPO of M{s} on the preference pairs of iteration {s}: new prompts, replies M{s} sampled, and their scores "
                f"from the run's judge ({summary.get(f'iter{s}/judge/by', 'the model itself')}), as in Self-Rewarding Language "
                "Models (Yuan et al., 2024), Sec. 3.2-3.3.")
        pair_prefix = f"iter{s}/pairs/"
        data_lines = [f"- {pair_prefix}{k}: {_value(summary[pair_prefix + k])}" for k in PAIR_KEYS if summary.get(pair_prefix + k) is not None]
        data_lines += [f"- {k}: {_value(summary[k])}" for k in (f"iter{s}/prompts/accepted", f"iter{s}/judge/parse_fail_rate", f"iter{s}/judge/by")
                       if summary.get(k) is not None]
    if summary.get(f"m{t}/dpo/skipped"):
        what = f"M{t}: a copy of M{t - 1}: iteration {t - 1} gave no preference pair (iteration.on_no_pairs=carry)."
    lines = [head, f"# M{t} of an srl self-rewarding run", "", what, "", f"Base model: `{base}`", "", "## Data", "", *data_lines, "",
             "## Training (this stage's statistics)", "", "| metric | value |", "|---|---|", *(f"| {k} | {_value(v)} |" for k, v in rows), "",
             "Losses are stage statistics over the optimizer steps (first, mean, last), not a last micro-batch"
             + ("; `pairs` counts pairs trained on over all epochs." if kind == "dpo" else "."), "",
             "## Evaluation", "", f"Judge quality, judge-free measures and the head-to-head of M{t} are in the run dir's `eval/m{t}/` and "
             "`eval/table.md` (written after this card).", "", "## Reproduce", "", "```bash", command, "```", "",
             f"Stage config fingerprint: `{fingerprint}` (the run dir's `manifest.json` lists the values it covers).", ""]
    return "\n".join(lines)


def write_card(folder: Path, t: int, base: str, data: str, summary: Mapping[str, Any], command: str, fingerprint: str) -> Path:
    path = Path(folder) / "README.md"
    atomic_write_text(path, card_text(t, base, data, summary, command, fingerprint))
    return path


def command_line(overrides: Sequence[str]) -> str:
    return " ".join(["python -m srl.run", *(shlex.quote(o) for o in overrides)])


def push(folders: Mapping[int, Path], repo_id: str, private: bool = True, api: Any = None) -> list[str]:
    """Upload each M_t folder to ``repo_id`` under ``m{t}/``; returns the commit URLs (or their descriptions)."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    out = []
    for t, folder in sorted(folders.items()):
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=f"m{t}", commit_message=f"srl: M{t}")
        out.append(str(getattr(info, "commit_url", info)))
        log.info("pushed M%d (%s) to %s/m%d", t, folder, repo_id, t)
    return out
