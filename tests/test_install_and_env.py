"""tools/install.sh says which indexes and pins it would use (DRY_RUN=1, nothing downloaded), for
CPU and for a CUDA version; dimerec-env reports the stack and runs one sharded lookup."""

import os
import subprocess
import sys

import pytest

from tests.distributed.conftest import REPO


def dry_run(tmp_path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DRY_RUN": "1", "VENV": str(tmp_path / "venv"), **env}
    return subprocess.run(
        ["bash", "tools/install.sh"], cwd=REPO, env=environment, capture_output=True, text=True, timeout=60
    )


def test_cpu_takes_torch_from_pytorchs_cpu_index_and_the_cpu_fbgemm(tmp_path):
    done = dry_run(tmp_path, DIMEREC_DEVICE="cpu")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"would run: python3 -m venv {tmp_path / 'venv'}" in lines
    (torch_line,) = [line for line in lines if " torch==2.13.0 --index-url " in line]
    assert torch_line.endswith("--index-url https://download.pytorch.org/whl/cpu")
    (fbgemm_line,) = [line for line in lines if line.startswith("would run:") and "fbgemm-gpu" in line]
    assert "fbgemm-gpu-cpu==1.8.0 torch==2.13.0" in fbgemm_line and "--index-url" not in fbgemm_line
    assert any("--no-deps torchrec==1.8.0" in line for line in lines)
    assert not (tmp_path / "venv").exists(), "a dry run creates nothing"


@pytest.mark.parametrize("cuda, wheels", [("12.6", "cu126"), ("13.0", "cu130")])
def test_cuda_takes_torch_and_fbgemm_gpu_from_the_index_of_that_cuda(tmp_path, cuda, wheels):
    done = dry_run(tmp_path, DIMEREC_DEVICE="cuda", CUDA=cuda)
    assert done.returncode == 0, done.stderr
    index = f"--index-url https://download.pytorch.org/whl/{wheels}"
    lines = done.stdout.splitlines()
    assert any(line.endswith(f"torch==2.13.0 {index}") and "fbgemm" not in line for line in lines)
    assert any(line.endswith(f"fbgemm-gpu==1.8.0 torch==2.13.0 {index}") for line in lines)


def test_a_cuda_or_device_it_cannot_use_is_one_line(tmp_path):
    done = dry_run(tmp_path, DIMEREC_DEVICE="cuda", CUDA="12")
    assert done.returncode == 2 and "CUDA must look like 12.6, got '12'" in done.stderr
    done = dry_run(tmp_path, DIMEREC_DEVICE="tpu")
    assert done.returncode == 2 and "DIMEREC_DEVICE must be auto, cpu or cuda" in done.stderr


def test_dimerec_env_reports_the_stack_and_one_sharded_lookup():
    done = subprocess.run(
        [sys.executable, "-m", "dimerec_dist.commands.env_report", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = dict(line.split(None, 1) if "  " not in line else line.split("  ", 1) for line in done.stdout.splitlines())
    report = {key.strip(): value.strip() for key, value in report.items()}
    assert report["torch"].startswith("2.13.0") and report["torchrec"] == "1.8.0"
    assert report["fbgemm build"] in ("cpu", "cuda") and report["torch build"]
    assert report["sharded lookup"].startswith("ok: 3 ids on "), report["sharded lookup"]
    assert done.stderr == "" and "DOES NOT IMPORT" not in done.stdout
