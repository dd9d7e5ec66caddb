#!/usr/bin/env bash
# The GPU proof (issue 20) on a machine without network: carried wheels, srl from the checkout, then the check.
#   bash experiments/gpu_check.sh [--sections rates,generation ...] [--out FILE]
# The machine has torch, transformers, lightning, peft, accelerate and PyYAML, but not Hydra: the
# wheels for the whole-loop section come in experiments/wheels/ (git-ignored; ~390 KB). Fetch them
# on a machine with PyPI, from the repository root (antlr4 4.9.3 is an sdist only: build its wheel):
#   pip download --no-deps hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 -d experiments/wheels
#   pip wheel --no-deps --no-build-isolation experiments/wheels/antlr4-python3-runtime-4.9.3.tar.gz -w experiments/wheels
#   rm experiments/wheels/*.tar.gz
# (hydra_core-1.3.8 169 KB, antlr4_python3_runtime-4.9.3 145 KB, omegaconf-2.3.1 80 KB; the versions are constraints.txt's.)
set -euo pipefail
cd "$(dirname "$0")/.."
deps="${TMPDIR:-/tmp}/srl_gpu_check_deps"
if ls experiments/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install --quiet --no-index --no-deps --target "$deps" experiments/wheels/*.whl
else
  echo "gpu_check.sh: no wheels in experiments/wheels/ (the loop section needs hydra-core, omegaconf, antlr4)" >&2
fi
python3 -c "import yaml" 2>/dev/null || echo "gpu_check.sh: PyYAML is missing: the trainer configs and the loop section need it" >&2
# srl from the checkout, no install (pip install -e . would need setuptools from the network)
export PYTHONPATH="$PWD:$deps${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec python3 experiments/gpu_check.py "$@"
