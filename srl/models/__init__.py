"""Language models as srl loads and saves them: model specs from a folder or Hub id, dtypes and
safetensors-only loading (``loading``), the embedded SmolLM2 (``embedded``), and chat templates and
end-of-turn tokens (``chat``). Imports only ``srl.core``, ``srl.data`` and ``srl.models``.
"""
