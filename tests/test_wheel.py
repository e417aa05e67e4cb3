"""The product works from an installed wheel: no research/, no tools/, no source checkout."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_the_product_alone_and_it_runs_from_there(tmp_path):
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ beside the sources
    shutil.copytree(REPO / "dimerec_dist", source / "dimerec_dist", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(tmp_path / "wheel")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("dimerec_dist-*.whl")
    target = tmp_path / "installed"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "dimerec_dist" / "training" / "trainer.py").is_file() and not (target / "research").exists()
    probe = (
        "import importlib.util, dimerec_dist, dimerec_dist.training.trainer, dimerec_dist.serving.server; "
        "print(dimerec_dist.__file__); print(importlib.util.find_spec('research'))"
    )
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    where, research = done.stdout.split()
    assert where.startswith(str(target)) and research == "None"
    done = subprocess.run(
        [sys.executable, "-m", "dimerec_dist.commands.train", "--print-config", "train.epochs=2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "epochs: 2" in done.stdout, done.stderr[-3000:]
