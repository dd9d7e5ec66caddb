"""Model loading: a Hub id or local folder, the embedded SmolLM2-135M-Instruct, or a tiny model.

Each spec is a small dataclass built by Hydra (``conf/model``) whose ``load()`` returns
``(model, tokenizer)``; building a spec loads nothing, so configs can be checked without weights.
Every tokenizer returned has a chat template and a pad token, and every model is in train mode
(``from_pretrained`` returns eval mode). Models that srl saves are plain ``save_pretrained``
folders with tokenizer and chat template (``save_model``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


# Llama-2 chat format ([INST] ... [/INST]) for base models without a template of their own.
LLAMA2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'system' %}"
    "{{ '<<SYS>>\\n' + message['content'].strip() + '\\n<</SYS>>\\n\\n' }}{% else %}"
    "{{ ' ' + message['content'].strip() + eos_token }}{% endif %}{% endfor %}"
)


NAMED_TEMPLATES = {"chatml": CHATML_TEMPLATE, "llama2": LLAMA2_TEMPLATE}


SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SRL_CACHE", Path.home() / ".cache" / "srl")).expanduser()


def finish_tokenizer(tokenizer: Any, chat_template: str | None = None) -> Any:
    """Give the tokenizer a chat template (config override first: a name in NAMED_TEMPLATES or
    Jinja text) and a pad token; a template whose end of turn is not one token (generation could
    not stop there: ``srl.models.chat.end_of_turn_id``) is refused here, at load time."""
    if chat_template:
        tokenizer.chat_template = NAMED_TEMPLATES.get(chat_template, chat_template)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template; set model.chat_template in the config "
            f"(a name among {sorted(NAMED_TEMPLATES)} or a Jinja template)"
        )
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so reusing EOS is safe.
        tokenizer.pad_token = tokenizer.eos_token
    from srl.models.chat import end_of_turn_id

    end_of_turn_id(tokenizer)  # a template whose end of turn is no single token fails here, before any training
    return tokenizer


def _ready(model: torch.nn.Module, tokenizer: Any) -> tuple[torch.nn.Module, Any]:
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.train()
    return model, tokenizer


@dataclasses.dataclass
class HFModelSpec:
    """A Hub id or a local ``save_pretrained`` folder (dtype, trust flag, revision, chat template).

    Safe by default: weights load from safetensors only, since unpickling a ``pytorch_model.bin``
    someone else wrote can run code; ``allow_pickle_weights`` opts in to such a model (transformers
    then reads it with ``torch.load(weights_only=True)``). ``trust_remote_code`` stays off unless set.
    """

    name_or_path: str
    dtype: str = "float32"
    trust_remote_code: bool = False
    allow_pickle_weights: bool = False
    revision: str | None = None
    chat_template: str | None = None
    attn_implementation: str | None = None

    @property
    def name(self) -> str:
        return self.name_or_path

    def load(self) -> tuple[torch.nn.Module, Any]:
        return self._load({})

    def load_quantized(self, quantization_config: Any) -> tuple[torch.nn.Module, Any]:
        """Loaded through bitsandbytes (``adapters.quantization_config``), on this process's device."""
        from srl.core.distributed import local_device

        return self._load({"quantization_config": quantization_config, "device_map": {"": str(local_device())}})

    def _source(self) -> str:
        path = Path(self.name_or_path).expanduser()
        return str(path) if path.exists() else self.name_or_path

    def tokenizer(self) -> Any:
        """The finished tokenizer (chat template, pad token), without loading weights."""
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self._source(), trust_remote_code=self.trust_remote_code, revision=self.revision)
        return finish_tokenizer(tok, self.chat_template)

    def _load(self, extra: dict[str, Any]) -> tuple[torch.nn.Module, Any]:
        from transformers import AutoModelForCausalLM

        source = self._source()
        folder = Path(source)
        refuse = (
            f"{source}: the model's weights are pickle files ({PICKLE_WEIGHTS[0]}) with no safetensors copy, and unpickling "
            "a file you did not create can run code. If you trust it, set allow_pickle_weights: true on the model spec "
            "(model.allow_pickle_weights=true), or convert the weights to safetensors once"
        )
        if not self.allow_pickle_weights and folder.is_dir() and not any((folder / n).is_file() for n in SAFE_WEIGHTS):
            if any((folder / n).is_file() for n in PICKLE_WEIGHTS):
                raise OSError(refuse)  # before the tokenizer: nothing loaded yet
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        kwargs["use_safetensors"] = None if self.allow_pickle_weights else True  # None: safetensors first, else .bin
        tokenizer = self.tokenizer()
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(self.dtype), **kwargs, **extra)
        except Exception as exc:
            broken = unreadable_weights(folder) if folder.is_dir() else None
            if broken is not None:
                raise ModelLoadError(
                    f"{broken[0]}: the model's weights cannot be read ({broken[1]}): the file is cut off or corrupted "
                    "(a copy or download that did not finish, a full disk). Copy or download it again; if srl wrote it "
                    "(a run dir's m<t>/model), restore the run dir or train that stage again in a new run dir"
                ) from exc
            if not isinstance(exc, OSError) or self.allow_pickle_weights or folder.is_dir() or "safetensors" not in str(exc):
                raise
            raise OSError(f"{refuse} ({exc})") from exc  # a Hub model without safetensors
        return _ready(model, tokenizer)


class ModelLoadError(OSError):
    """A model folder's weights cannot be read; the message names the file."""


def unreadable_weights(folder: Path) -> tuple[Path, str] | None:
    """The first safetensors file of ``folder`` whose header cannot be read or whose tensors run past
    its end (a truncated file), with the reason; None if every file reads."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as fh:
                fh.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError
            return path, str(exc)
    return None


def load_tokenizer(spec: Any) -> Any:
    """The tokenizer a spec's ``load()`` would return, without loading weights."""
    if isinstance(spec, HFModelSpec):
        return spec.tokenizer()
    if hasattr(spec, "spec"):
        return load_tokenizer(spec.spec())
    if hasattr(spec, "base"):
        return load_tokenizer(spec.base)
    return spec.load()[1]


def save_model(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Save a plain HF folder (weights, config, tokenizer, chat template) that ``from_pretrained`` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)  # safetensors (transformers 5 writes nothing else)
    tokenizer.save_pretrained(folder)
    return folder
