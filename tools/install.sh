#!/usr/bin/env bash
# Installs dimerec-dist into a virtual environment in the checkout.
#
# This file is the one place the dependency matrix lives. torchrec's wheel
# declares a dependency on `fbgemm-gpu` (the CUDA build), which breaks a CPU
# machine; so torchrec goes in with --no-deps and its real needs are listed here.
#
#   DIMEREC_DEVICE=auto|cpu|cuda   which build of torch/fbgemm (auto: cuda if nvidia-smi sees a GPU)
#   VENV=.venv                     where the environment goes
#   PYTHON=python3                 the interpreter that creates it
#   TORCH_INDEX_URL=...            optional extra index for a CUDA torch wheel
set -euo pipefail

TORCH_VERSION=2.13.0
TORCHREC_VERSION=1.8.0
FBGEMM_VERSION=1.8.0
# torchrec 1.8.0's declared requirements, minus fbgemm-gpu (chosen below).
TORCHREC_NEEDS=(tensordict "torchmetrics==1.0.3" tqdm pyre-extensions)
PROJECT_NEEDS=(
  "numpy>=1.26"
  "pyarrow>=15"
  "ray[serve]==2.60.0"
  "prometheus_client>=0.20"
  "tensorboard>=2.16"
  "pyyaml>=6"
  "matplotlib>=3.8"
  "faiss-cpu==1.15.1"
  "pytest>=8"
  "pytest-cov>=5"
  "ruff==0.17.6"
)

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
DEVICE=${DIMEREC_DEVICE:-auto}

if [[ "$DEVICE" == auto ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q GPU; then
    DEVICE=cuda
  else
    DEVICE=cpu
  fi
fi
case "$DEVICE" in
  cpu)  FBGEMM_PKG="fbgemm-gpu-cpu==${FBGEMM_VERSION}" ;;
  cuda) FBGEMM_PKG="fbgemm-gpu==${FBGEMM_VERSION}" ;;
  *) echo "install.sh: DIMEREC_DEVICE must be auto, cpu or cuda, got '$DEVICE'" >&2; exit 2 ;;
esac
echo "install.sh: device=$DEVICE venv=$VENV torch=$TORCH_VERSION torchrec=$TORCHREC_VERSION $FBGEMM_PKG"

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)

TORCH_ARGS=("torch==${TORCH_VERSION}")
[[ -n "${TORCH_INDEX_URL:-}" ]] && TORCH_ARGS+=(--extra-index-url "$TORCH_INDEX_URL")
# On CPU, refuse anything but the CPU build of torch: a plain `torch` pulls GBs of CUDA.
"${PIP[@]}" "${TORCH_ARGS[@]}"
"${PIP[@]}" "$FBGEMM_PKG" "torch==${TORCH_VERSION}"
"${PIP[@]}" --no-deps "torchrec==${TORCHREC_VERSION}"
"${PIP[@]}" "${TORCHREC_NEEDS[@]}" "${PROJECT_NEEDS[@]}" "torch==${TORCH_VERSION}"
"${PIP[@]}" --no-deps -e .

# Fail here, not in the first test, if the matrix does not hold together.
"$VENV/bin/python" - <<'PY'
import torch, fbgemm_gpu, torchrec, pyarrow, ray, tensorboard
print(f"install.sh: ok torch {torch.__version__}, torchrec {torchrec.__version__ if hasattr(torchrec, '__version__') else '?'}, "
      f"pyarrow {pyarrow.__version__}, ray {ray.__version__}, cuda={torch.cuda.is_available()}")
PY
