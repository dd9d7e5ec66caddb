"""Optional vLLM generation backend with the contract of ``srl.generation.sample.generate_ids``.

``VLLMGenerator.generate_ids(prompts, seeds, settings, pad_id, stop_ids)`` continues each token-id
prompt and returns ``(new ids, finished)`` per row, in input order: finished rows end with the stop
token, unfinished rows were cut at ``settings.max_new_tokens``; temperature <= 0 is greedy and each
row samples with its own seed. vLLM is imported only when a generator is built, so srl imports and
its tests run without it (``pip install "srl[vllm]"`` on a CUDA machine to use it).
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any, Sequence

from srl.core import distributed
from srl.generation.sampling import SamplingSettings

INSTALL_HINT = 'the vLLM backend needs the vllm package; install it with: pip install "srl[vllm]"'


NO_CUDA = "the vLLM backend needs a CUDA GPU; use backend=hf on this machine"


@dataclasses.dataclass
class VLLMSettings:
    """How the vLLM engine is built (the ``backend`` config section when ``backend=vllm``)."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    # The judge rubric and few-shot prefix are shared by every judge prompt: their KV blocks are reused.
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's own context length
    dtype: str = "auto"
    enforce_eager: bool = False  # True skips CUDA-graph capture: faster start, slower decoding
    seed: int = 0  # engine seed; every request also carries its row's own seed

    def __post_init__(self) -> None:
        if not isinstance(self.tensor_parallel_size, int) or self.tensor_parallel_size < 1:
            raise ValueError(f"backend.tensor_parallel_size must be an integer >= 1, got {self.tensor_parallel_size!r}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(f"backend.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"backend.max_model_len must be >= 1 or null, got {self.max_model_len!r}")


def require_vllm() -> Any:
    """The ``vllm`` module, or a clear error when it is missing or there is no CUDA device."""
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name != "vllm":  # vllm is there but broken: its own error says more
            raise
        raise ModuleNotFoundError(INSTALL_HINT, name="vllm") from exc
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(NO_CUDA)
    return vllm


class VLLMGenerator:
    """A vLLM engine over one saved model folder (weights and tokenizer), continuing token-id prompts.

    ``generation_config`` is the folder's (None without one), so ``srl.generation.sample.stop_token_ids(
    tokenizer, generator)`` finds the model's extra EOS ids as it does for a torch model, and the
    chat template's end-of-turn token from the tokenizer: the engine stops at exactly the ids srl
    passes (``ignore_eos``), the same set as srl's own engine.
    """

    name = "vllm"

    def __init__(self, model_path: str, settings: VLLMSettings) -> None:
        self._vllm = require_vllm()
        self.model_path = str(model_path)
        self.settings = settings
        extra: dict[str, Any] = {}
        # Under torchrun (srl/core/distributed.py) every rank is one tensor-parallel worker of a single
        # engine (vLLM's external launcher): all ranks submit the same prompts and get the same
        # outputs, so sample_chat does not split them (spans_ranks).
        self.spans_ranks = distributed.active()
        if self.spans_ranks:
            if settings.tensor_parallel_size != distributed.world_size():
                raise ValueError(
                    f"backend=vllm in a {distributed.world_size()}-process run needs backend.tensor_parallel_size="
                    f"{distributed.world_size()} (one engine over all ranks), got {settings.tensor_parallel_size}"
                )
            extra["distributed_executor_backend"] = "external_launcher"
        self.llm = self._vllm.LLM(
            model=self.model_path, tokenizer=self.model_path, tensor_parallel_size=settings.tensor_parallel_size,
            gpu_memory_utilization=settings.gpu_memory_utilization, enable_prefix_caching=settings.enable_prefix_caching,
            max_model_len=settings.max_model_len, dtype=settings.dtype, enforce_eager=settings.enforce_eager, seed=settings.seed, **extra,
        )
        self.generation_config = None
        if (Path(self.model_path) / "generation_config.json").is_file():
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig.from_pretrained(self.model_path)

    def _params(self, seed: int, settings: SamplingSettings, stop_ids: Sequence[int]) -> Any:
        greedy = settings.temperature <= 0
        return self._vllm.SamplingParams(
            n=1,
            temperature=0.0 if greedy else float(settings.temperature),
            top_p=1.0 if greedy else min(float(settings.top_p), 1.0),  # srl treats top_p >= 1 as "off"; vLLM wants <= 1
            max_tokens=settings.max_new_tokens,
            seed=int(seed),
            stop_token_ids=list(stop_ids),
            # srl stops at stop_ids and nothing else; without this vLLM would also stop at the
            # tokenizer's EOS and generation_config's eos ids even when the caller left them out.
            ignore_eos=True,
            skip_special_tokens=False,
            detokenize=False,  # srl decodes the ids itself
        )

    def generate_ids(
        self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], settings: SamplingSettings,
        pad_id: int | None, stop_ids: Sequence[int],
    ) -> list[tuple[list[int], bool]]:
        """Continue each token-id prompt; (new ids, finished) per row, in the order of ``prompts``.

        ``pad_id`` is unused (vLLM does not pad) and kept for the engine's signature.
        """
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt is needed")
        if not prompts:
            return []
        stops = [int(s) for s in stop_ids]
        # The dict form is what vllm.inputs.TokensPrompt (a TypedDict) builds, in every version.
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]
        params = [self._params(seed, settings, stops) for seed in seeds]
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(prompts)} prompts")
        return [self._result(out, settings.max_new_tokens, stops) for out in outputs]

    @staticmethod
    def _result(output: Any, max_new_tokens: int, stop_ids: list[int]) -> tuple[list[int], bool]:
        completion = output.outputs[0]
        ids = [int(t) for t in completion.token_ids]
        reason = completion.finish_reason
        if reason == "length":
            return ids[:max_new_tokens], False
        if reason != "stop":
            raise RuntimeError(f"vLLM request {getattr(output, 'request_id', '?')} ended with finish_reason={reason!r}")
        if not ids or ids[-1] not in stop_ids:
            # Some vLLM versions leave the stop token out of token_ids; the contract keeps it.
            matched = completion.stop_reason
            if isinstance(matched, int) and not isinstance(matched, bool):
                ids.append(matched)
            elif stop_ids:
                ids.append(stop_ids[0])
        return ids, True

    def close(self) -> None:
        """Free the engine and its GPU memory (the KV cache holds most of the card)."""
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()  # vLLM v1 runs the engine in a child process; stop it now, not at exit
        del llm, core
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
