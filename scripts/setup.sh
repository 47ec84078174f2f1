#!/usr/bin/env bash
# Create .venv with CPU torch 2.13.0 and ovsam (editable) with its extras. Idempotent.
# torch is installed first and pinned, so no later step can pull a multi-GB CUDA build;
# reference packages that declare torch/torchvision dependencies are installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# What was installed is recorded (.venv/.ovsam-setup: a hash of pyproject.toml and this
# script); while it holds and ovsam imports from this checkout, a rerun installs nothing and
# needs no network (scripts/test.sh runs this first, every time; delete the file to reinstall).
stamp=.venv/.ovsam-setup
wanted=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
# the skip also needs what the installs give: this checkout's ovsam, CPU torch 2.13.0 and the
# extras' and tests' modules (a removed or replaced one is installed again)
installed() {
  .venv/bin/python - "$PWD/src/" <<'PY' 2>/dev/null
import importlib.util, sys, torch, ovsam, fastapi, onnx, onnxruntime, pycocotools, pytest, xdist
here = ovsam.__file__.startswith(sys.argv[1]) and importlib.util.find_spec("clip") is not None
cpu_torch = torch.__version__.split("+")[0] == "2.13.0" and torch.version.cuda is None
sys.exit(not (here and cpu_torch))  # clip-anytorch: only its files are used, not imported
PY
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! installed; then
  # The CPU build: from pip's own sources when they offer one (a "+cpu" wheel, as here), else
  # from PyTorch's CPU index too (PyPI's Linux torch is the CUDA build, with GBs of nvidia-*).
  TORCH=("torch==2.13.0")
  chosen=$(.venv/bin/python -m pip install --dry-run --quiet --report - --no-deps \
    --ignore-installed "${TORCH[@]}" | .venv/bin/python -c \
    'import json, sys; print(json.load(sys.stdin)["install"][0]["metadata"]["version"])')
  [[ "$chosen" == *+cpu ]] || TORCH+=(--extra-index-url https://download.pytorch.org/whl/cpu)
  "${PIP[@]}" "${TORCH[@]}"
  "${PIP[@]}" -e ".[dev,serve,coco,onnx]"
  # test-only reference implementations (tokenizer parity); their torchvision requirement is
  # ignored
  "${PIP[@]}" --no-deps "clip-anytorch==2.6.0"
fi
rm -f "$stamp"  # written again only when the check below passes
.venv/bin/python - <<'PY'
import importlib.metadata as md
import torch
bad = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia")]
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
assert not bad, f"CUDA packages were pulled in: {bad}"
print(f"ovsam environment ready: torch {torch.__version__}, python .venv/bin/python")
PY
echo "$wanted" > "$stamp"
