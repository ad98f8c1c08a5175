#!/usr/bin/env bash
# make gpu-check: the trainer as the chart's pods run it, next to plain TRL, on random-weight
# Qwen2.5-0.5B/1.5B-sized models (tests/gpu/check.py says what it measures and how).
#
#   bash tests/gpu/check.sh [--targets] [--only TEXT] [--out DIR]   # on a GPU machine, no network
#   bash tests/gpu/check.sh --cpu                                   # CPU mode, tiny model (make test)
#
# Python: $PYTHON, else the repo's .venv, else python3. It needs torch, transformers, peft,
# accelerate, safetensors, and TRL + datasets: where those two are missing (an accelerator
# image without them), it installs the wheels of tests/gpu/wheels (`make gpu-wheels` fetches
# them for CPython 3.12, pyarrow slimmed to fit 64 MiB) into .gpu-check/site, offline.
# llm_finetune itself runs from python/src (no install).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
export PYTHONPATH="$PWD/python/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$py" -c "import trl, datasets, yaml" 2>/dev/null; then
  wheels=${GPU_CHECK_WHEELS:-tests/gpu/wheels}
  site=.gpu-check/site
  if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
    echo "gpu-check: trl/datasets are not installed and $wheels has no wheels: run 'make gpu-wheels' where there is network" >&2
    exit 2
  fi
  [ -f "$site/.complete" ] || { rm -rf "$site"; "$py" -m pip install -q --no-index --no-deps --target "$site" "$wheels"/*.whl; touch "$site/.complete"; }
  export PYTHONPATH="$PYTHONPATH:$PWD/$site"
fi
exec "$py" tests/gpu/check.py "$@"
