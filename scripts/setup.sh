#!/usr/bin/env bash
# Create .venv with CPU torch 2.13.0 and ovsam (editable) with its extras. Idempotent.
# torch is installed first and pinned, so no later step can pull a multi-GB CUDA build;
# reference packages that declare torch/torchvision dependencies are installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev,serve,coco,onnx]"
# test-only reference implementations (tokenizer parity); their torchvision requirement is ignored
"${PIP[@]}" --no-deps "clip-anytorch==2.6.0"
.venv/bin/python - <<'PY'
import importlib.metadata as md
import torch
bad = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia")]
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
assert not bad, f"CUDA packages were pulled in: {bad}"
print(f"ovsam environment ready: torch {torch.__version__}, python .venv/bin/python")
PY
