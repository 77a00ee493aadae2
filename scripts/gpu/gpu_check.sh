#!/usr/bin/env bash
# One prepared GPU check (scripts/gpu/gpu_check.py says what it measures): about 6 minutes on one H100.
#   scripts/gpu/gpu_check.sh [--out DIR]           # on a GPU machine; writes DIR/<card>/report.md
#   GPU_CHECK_CPU=1 scripts/gpu/gpu_check.sh --out D # the same code at tiny sizes on the CPU
# Where hydra-core/omegaconf are missing (a bare GPU image), wheels in .whl/ are installed first.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The repository's .venv where there is one (the README's GPU_CHECK_CPU=1 line), else python3 (a bare GPU image).
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
if ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "error: hydra-core is not installed and no wheels in .whl/: run make install, or carry the wheels" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu/gpu_check.py "$@"
