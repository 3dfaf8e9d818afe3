#!/usr/bin/env bash
# The GPU path, measured in one run (docs/gpu.md): on the GPU machine, from the repository root,
# with .gpu/run (`make gpu-build`) carried:
#
#   OUT=$OUT bash bench/gpu.sh
#
# It trains the notebook's job on the GPU and on the CPU (same seed, accuracies within 0.5
# points), runs `train predict` on the GPU model, two Gloo ranks on the one GPU (bit-identical
# weights), 5-epoch timings at batch 32, 256 and 1024 against PyTorch eager on the same GPU, and
# time to the first step. Everything lands in $OUT: gpu.log (this output), jobs.log (every
# process's log), results.json, results.md, and the GPU job's metrics and evaluation.
#
# Variables: DEVICE (cuda; cpu to rehearse on a machine without a GPU), EPOCHS (5), REPS (3),
# BATCHES (32,256,1024), BUDGET (seconds for all steps, 420), CARRY (.gpu/run), PYTHON (python3).
# The binary uses the libtorch of $PYTHON's torch, found through LD_LIBRARY_PATH.
set -uo pipefail

: "${OUT:?set OUT to the folder for the results}"
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-5}
REPS=${REPS:-3}
BATCHES=${BATCHES:-32,256,1024}
BUDGET=${BUDGET:-420}
CARRY=${CARRY:-.gpu/run}
PYTHON=${PYTHON:-python3}
BIN=$CARRY/train

mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
start=$(date +%s)
echo "== bench/gpu.sh $(date -u +%FT%TZ) DEVICE=$DEVICE EPOCHS=$EPOCHS REPS=$REPS BATCHES=$BATCHES"
echo "== host: $(uname -srm), $(nproc) cores, $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
[ -f /etc/os-release ] && grep -E '^PRETTY_NAME=' /etc/os-release
ldd --version 2>/dev/null | head -n 1
if [ ! -x "$BIN" ]; then
  echo "no $BIN: build it with 'make gpu-build' and carry .gpu/run"
  exit 2
fi
echo "== carried: $(cat "$CARRY/commit" 2>/dev/null) $(du -sh "$CARRY" | cut -f1)"

if [ "$DEVICE" = cuda ]; then
  echo "== nvidia-smi"
  timeout 30 nvidia-smi || echo "nvidia-smi failed ($?)"
  # src/device.rs looks for the driver here before it tries CUDA.
  cat /proc/driver/nvidia/version 2>/dev/null || echo "no /proc/driver/nvidia/version"
fi

echo "== $PYTHON's torch"
info=$(timeout 90 "$PYTHON" - <<'EOF'
import os, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
      torch.backends.cudnn.version() if torch.cuda.is_available() else None)
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else None)
print("LIB", os.path.join(os.path.dirname(torch.__file__), "lib"))
EOF
) || { echo "$PYTHON cannot import torch: $info"; exit 2; }
echo "$info" | grep -v '^LIB '
TORCH_LIB=$(echo "$info" | sed -n 's/^LIB //p')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export SMTRAIN_TORCH_VERSION=$(echo "$info" | head -n 1)
export SMTRAIN_GPU=$(echo "$info" | sed -n 2p)
export SMTRAIN_COMMIT=$(cat "$CARRY/commit" 2>/dev/null)
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

echo "== the binary's libraries"
if ! timeout 30 "$BIN" --version; then
  echo "the binary does not start; its libraries:"
  ldd "$BIN"
  exit 2
fi
ldd "$BIN" | grep -E 'torch|c10|gomp|cudart|stdc|not found'

left=$((BUDGET - ($(date +%s) - start)))
echo "== checks and timings ($left s left)"
timeout --kill-after=10 $((left + 15)) "$PYTHON" bench/gpu_run.py --bin "$BIN" --data "$CARRY/data" \
  --out "$OUT" --python "$PYTHON" --device "$DEVICE" --epochs "$EPOCHS" --reps "$REPS" \
  --batches "$BATCHES" --budget "$left"
rc=$?
echo "== done in $(($(date +%s) - start)) s, exit $rc"
exit $rc
