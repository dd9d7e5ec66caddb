"""One model in memory at a time: the slot keeps the last loaded model while consecutive stages use
it, and loads the next through the generation backend when a stage asks for another."""

from __future__ import annotations

from typing import Any

from srl.generation.weights import EngineSettings, to_generation_format
from srl.models.loading import load_tokenizer


class ModelSlot:
    """Holds at most one loaded model: asking for another key frees the one held first.

    ``backend`` (``conf/backend``: None or ``EngineSettings`` for srl's own engine, or ``VLLMSettings``)
    and ``device`` apply to models loaded for generation through ``get``. For srl's engine the model
    is converted in place to ``EngineSettings.weights`` (``srl/generation/weights.py``: bfloat16 where
    the hardware has it) when a generation stage asks for it. A training stage, or anything that
    computes log-probs, takes the model as configured with ``train=True``: a model converted for
    generation is loaded again then. ``train=True`` also leaves placement to the Lightning strategy
    (FSDP and DeepSpeed shard from host memory).
    """

    def __init__(self, backend: Any | None = None, device: Any | None = None) -> None:
        self.key: str | None = None
        self._value: tuple[Any, Any] | None = None
        # No engine settings (a slot built in code): the model generates as loaded.
        self.engine = backend if isinstance(backend, EngineSettings) else EngineSettings(weights="as_loaded")
        self.backend = None if isinstance(backend, EngineSettings) else backend  # a generation-only backend (vLLM)
        self.device = device
        self.converted: Any = None  # the dtype the held model was converted to for generation (None: as configured)

    def get(self, key: str, spec: Any, train: bool = False) -> tuple[Any, Any]:
        if self.backend is not None and not train:
            from srl.generation.vllm import VLLMGenerator

            key = "vllm:" + key
            if self.key != key or self._value is None:
                self.clear()  # free the GPU for the engine
                path = spec.spec().name_or_path if hasattr(spec, "spec") else getattr(spec, "name_or_path", None)
                if path is None:
                    raise ValueError(f"backend=vllm loads a model folder or Hub id; {type(spec).__name__} has none (use backend=hf)")
                self._value = (VLLMGenerator(path, self.backend), load_tokenizer(spec))
                self.key = key
            return self._value
        if self.key != key or self._value is None or (train and self.converted is not None):
            self.clear()
            self._value = spec.load()
            self.key = key
        model = self._value[0]
        if self.device is not None and not train and getattr(model, "hf_device_map", None) is None:
            model.to(self.device)  # quantized models were placed when loaded (device_map)
        if not train and self.converted is None:
            self.converted = to_generation_format(model, self.engine.weights)
        return self._value

    def clear(self) -> None:
        if self._value is not None and hasattr(self._value[0], "close"):
            self._value[0].close()
        self.key, self._value, self.converted = None, None, None
