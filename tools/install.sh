#!/usr/bin/env bash
# Installs dimerec-dist into a virtual environment in the checkout.
#
# This file is the one place the torch / torchrec / fbgemm matrix lives (the project's other needs
# are pyproject.toml's). torchrec's wheel declares a dependency on `fbgemm-gpu` (the CUDA build),
# which breaks a CPU machine; so torchrec goes in with --no-deps and its real needs are listed here.
#
# torch and fbgemm-gpu come from PyTorch's wheel index for the build: .../whl/cpu on CPU (PyPI's
# plain `torch` is the CUDA build, GBs), .../whl/cuXYZ on GPU, matching the CUDA the machine runs
# (fbgemm-gpu's CUDA wheels live only there). Everything else comes from PyPI (or pip's config).
#
#   DIMEREC_DEVICE=auto|cpu|cuda   which build of torch/fbgemm (auto: cuda if nvidia-smi sees a GPU)
#   CUDA=12.6                      the CUDA of the wheels on GPU (PyTorch publishes a few per release)
#   TORCH_INDEX_URL=...            PyTorch's index for that build, if not the one derived above
#   VENV=.venv                     where the environment goes
#   PYTHON=python3                 the interpreter that creates it
#   DRY_RUN=1                      print the commands, indexes and pins, install nothing
set -euo pipefail

TORCH_VERSION=2.13.0
TORCHREC_VERSION=1.8.0
FBGEMM_VERSION=1.8.0
# torchrec 1.8.0's declared requirements, minus fbgemm-gpu (chosen below).
TORCHREC_NEEDS=(tensordict "torchmetrics==1.0.3" tqdm pyre-extensions)
# The project's own needs and pins are pyproject.toml's (dependencies and these extras).
EXTRAS="ray,serving,plots,remote,research,test"

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEVICE=${DIMEREC_DEVICE:-auto}
CUDA=${CUDA:-12.6}
PYTORCH_WHEELS=https://download.pytorch.org/whl

if [[ "$DEVICE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
case "$DEVICE" in
  cpu)  FBGEMM_PKG="fbgemm-gpu-cpu==${FBGEMM_VERSION}"; WHEELS=cpu ;;
  cuda)
    [[ "$CUDA" =~ ^[0-9]+\.[0-9]+$ ]] || { echo "install.sh: CUDA must look like 12.6, got '$CUDA'" >&2; exit 2; }
    FBGEMM_PKG="fbgemm-gpu==${FBGEMM_VERSION}"; WHEELS="cu${CUDA//./}" ;;
  *) echo "install.sh: DIMEREC_DEVICE must be auto, cpu or cuda, got '$DEVICE'" >&2; exit 2 ;;
esac
TORCH_INDEX_URL=${TORCH_INDEX_URL:-$PYTORCH_WHEELS/$WHEELS}
echo "install.sh: device=$DEVICE venv=$VENV torch=$TORCH_VERSION torchrec=$TORCHREC_VERSION $FBGEMM_PKG index=$TORCH_INDEX_URL"

run() {  # a command, or with DRY_RUN=1 the line it would be
  if [[ "${DRY_RUN:-0}" == 1 ]]; then echo "would run: $*"; else "$@"; fi
}

[[ -x "$VENV/bin/python" ]] || run "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)

# torch, and on GPU fbgemm-gpu, from PyTorch's index for the build; the pins keep pip from moving torch.
run "${PIP[@]}" "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"
if [[ "$DEVICE" == cuda ]]; then
  run "${PIP[@]}" "$FBGEMM_PKG" "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"
else
  run "${PIP[@]}" "$FBGEMM_PKG" "torch==${TORCH_VERSION}"
fi
run "${PIP[@]}" --no-deps "torchrec==${TORCHREC_VERSION}"
run "${PIP[@]}" "${TORCHREC_NEEDS[@]}" "torch==${TORCH_VERSION}"
run "${PIP[@]}" -e ".[${EXTRAS}]" "torch==${TORCH_VERSION}"
[[ "${DRY_RUN:-0}" == 1 ]] && exit 0

# Fail here, not in the first test, if the matrix does not hold together: dimerec-env imports the
# stack and runs one sharded lookup.
"$VENV/bin/python" -m dimerec_dist.commands.env_report --check
