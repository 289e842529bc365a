#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#   scripts/setup.sh          runtime + training dependencies
#   scripts/setup.sh --dev    also test tools, and ComfyUI's own requirements when a ComfyUI checkout is found
#                             ($COMFYUI_PATH or ~/comfy/ComfyUI) so tests/comfyui can run it headless.
# torch is pinned through constraints.txt (CPU build 2.13.0); nothing here installs an unpinned torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# Run pip quietly: drop the index's harmless "Location ... is ignored" lines, keep everything else, and stop
# setup with pip's own exit status when an install fails.
quiet() {
  local log rc=0
  log=$(mktemp)
  "$@" > "$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither" "$log" >&2 || true
  rm -f "$log"
  return $rc
}
.venv/bin/python -c "import torch" 2>/dev/null || quiet "${PIP[@]}" torch==2.13.0
extras="train"
[ "${1:-}" = "--dev" ] && extras="dev"
quiet "${PIP[@]}" -c constraints.txt -e ".[${extras}]"
if [ "${1:-}" = "--dev" ]; then
  COMFY=${COMFYUI_PATH:-$HOME/comfy/ComfyUI}
  if [ -f "$COMFY/requirements.txt" ]; then
    # A second environment for tests/comfyui: ComfyUI's requirements (minus torchaudio, whose CUDA-linked wheel
    # does not import on the CPU-only torch) + this project. Kept apart from .venv because the registry's
    # torchvision is CUDA-linked too and breaks diffusers' imports there; the ComfyUI test harness declares the
    # two torchvision op schemas it needs before torchvision is imported (tests/comfyui/launch.py).
    [ -x .venv-comfyui/bin/python ] || "$PY" -m venv .venv-comfyui
    CPIP=(.venv-comfyui/bin/python -m pip install -q --disable-pip-version-check)
    .venv-comfyui/bin/python -c "import torch" 2>/dev/null || quiet "${CPIP[@]}" torch==2.13.0
    grep -vE '^(torchaudio|#|$)' "$COMFY/requirements.txt" > .venv-comfyui/comfyui-requirements.txt
    quiet "${CPIP[@]}" -c constraints.txt -r .venv-comfyui/comfyui-requirements.txt -e ".[dev]"
    echo "setup: .venv-comfyui ready for ComfyUI at $COMFY"
  else
    echo "setup: no ComfyUI checkout at $COMFY; tests/comfyui will be skipped"
  fi
fi
.venv/bin/python -c "import torch, imanim_core; print('setup: ok, torch', torch.__version__)"
