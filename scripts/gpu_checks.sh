#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (CI has none):
#   1. the tests marked gpu (CUDA answers equal the CPU's; bf16 training steps);
#   2. bench_mobilesam on cuda (ours next to upstream MobileSAM, same weights, same run);
#   3. bench_distill: bf16 SAM2CLIP steps/s and peak memory, official adapter size,
#      real MobileSAM teacher;
#   4. with IMAGES_DIR: a bf16 distillation run under torchrun (NCCL) on those images; its
#      log.jsonl and config.json are copied to OUT_DIR.
# Each step's output goes to OUT_DIR/<step>.log; the exit status is 1 if any step failed.
# Usage: scripts/gpu_checks.sh OUT_DIR [IMAGES_DIR]   (PYTHON=python3 to use another interpreter;
# STEPS=N sets the length of run 4, default 200). The interpreter needs a CUDA build of torch:
# scripts/setup.sh installs the CPU one (README, "GPU checks"); it is refused before any step.
set -uo pipefail
out=$(realpath -m -s "${1:?usage: scripts/gpu_checks.sh OUT_DIR [IMAGES_DIR]}")
images=${2:+$(realpath -m -s "$2")}
py=${PYTHON:-}
[[ "$py" == */* ]] && py=$(realpath -m -s "$py")
cd "$(dirname "$0")/.."
py=${py:-$PWD/.venv/bin/python}
torch_cuda=$("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda,
  "available" if torch.cuda.is_available() else "unavailable")' 2>&1 | tail -n 1)
if [[ "$torch_cuda" != *" available" ]]; then
    echo "gpu_checks.sh: error: $py cannot run CUDA ($torch_cuda): make an environment" \
        "with a CUDA torch and pass PYTHON=its/python (README, GPU checks)" >&2
    exit 2
fi
mkdir -p "$out"
status=0

step() {
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
step gpu_tests timeout 600 "$py" -m pytest -m gpu -q -p no:cacheprovider
step bench_mobilesam timeout 300 "$py" benchmarks/bench_mobilesam.py --device cuda --runs 20
step bench_distill timeout 300 "$py" benchmarks/bench_distill.py --steps 30 --batch-size 4
if [ -n "$images" ]; then
    run=$(mktemp -d)
    step distill_run timeout 600 "$py" -m torch.distributed.run --standalone --nproc_per_node 1 \
        -m ovsam train sam2clip --data "$images" --out "$run" --device cuda \
        --set "steps=${STEPS:-200}" --set batch_size=4 --set random_clip=true \
        --set log_every=1 --set "checkpoint_every=${STEPS:-200}"
    cp "$run/log.jsonl" "$run/config.json" "$out/" 2>/dev/null
    rm -rf "$run"
fi
exit $status
