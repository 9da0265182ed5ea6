#!/usr/bin/env bash
# Device check for a GPU session, no network needed: torchattacks, pyautoattack and mlxtend from .whl/ if missing, then
#   scripts/gpu_check.sh perf   the speed tests marked gpu, then `python -m benchmark.tools.perf` (about a minute)
#   scripts/gpu_check.sh all    the whole `python -m benchmark.tools.gpu_check` (tests, gpu-check profile, perf,
#                               AutoAttack; meant to fit 8 minutes on one H100)
# Results go to $OUT (the device runner's output folder) when it is set, else results/gpu-check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
DEST=${OUT:-results/gpu-check}
mkdir -p "$DEST"
"$PY" -c "import torchattacks, pyautoattack, mlxtend" 2>/dev/null || "$PY" -m pip install --quiet --no-index --no-deps .whl/*.whl
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
case "${1:-perf}" in
  perf)
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_fastpath.py tests/test_perf.py 2>&1 | tail -n 15 || echo "gpu speed tests FAILED (see above)"
    "$PY" -m benchmark.tools.perf --out "$DEST/perf.json" ;;
  all)
    "$PY" -m benchmark.tools.gpu_check --out "$DEST" ;;
  *)
    echo "usage: scripts/gpu_check.sh [perf|all]" >&2; exit 2 ;;
esac
