"""dimerec-env: what this machine's stack is, and whether it works. Issue reports start from it.

    dimerec-env            # versions, the fbgemm build, devices, and one sharded lookup
    dimerec-env --check    # the same, exit 1 if a part does not import or the lookup fails

The lookup is the trainer's own path in one process: a one-rank group (gloo, or NCCL on a GPU),
a 100-row table planned and sharded by TorchRec with FBGEMM's kernels, three ids looked up and
compared with the table's rows.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import platform
import sys
import time

from dimerec_dist.runtime.log_level import add_log_level, apply_log_level, setup_command_logging

PARTS = ("torch", "torchrec", "fbgemm_gpu", "pyarrow", "ray", "tensorboard", "numpy", "faiss", "matplotlib")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    """Name -> version (or why not) of each part of the stack, the fbgemm build, CUDA, NCCL, GPUs."""
    report = {"python": platform.python_version(), "platform": platform.platform()}
    report["dimerec-dist"] = _version("dimerec-dist") or "not installed (run from a checkout)"
    for name in PARTS:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a part that does not import is the report's point
            report[name] = f"DOES NOT IMPORT: {type(exc).__name__}: {exc}"[:300]
            continue
        report[name] = getattr(module, "__version__", None) or "?"
    gpu_build, cpu_build = _version("fbgemm-gpu"), _version("fbgemm-gpu-cpu")
    report["fbgemm build"] = "cuda" if gpu_build else "cpu" if cpu_build else "not installed"
    try:
        import torch

        report["torch build"] = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu"
        report["cuda devices"] = (
            ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            if torch.cuda.is_available()
            else "none"
        )
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        report["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl or "-")
    except Exception as exc:
        report["torch build"] = f"unknown ({type(exc).__name__})"
    report["cpus"] = str(os.cpu_count())
    return report


def sharded_lookup() -> str:
    """One sharded lookup through the trainer's own path; a line saying what ran, or raises."""
    import torch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from dimerec_dist.config import load_config
    from dimerec_dist.data.batch import FEATURES
    from dimerec_dist.runtime.process_group import init_distributed, shutdown
    from dimerec_dist.training.builders import build_model

    started = time.perf_counter()
    saved = dict(os.environ)
    ctx = init_distributed("auto")
    try:
        config = load_config(None, ["model.embedding_dim=16"])
        model, shards = build_model(config, 100, ctx, run_dir=None)
        ids = torch.tensor([1, 2, 3], device=ctx.device)
        lengths = torch.tensor([3] + [0] * (len(FEATURES) - 1), device=ctx.device)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=list(FEATURES), values=ids, lengths=lengths)
        looked_up = model.module.item_table(kjt)[FEATURES[0]].values()
        (shard,) = shards  # one rank holds every row
        expected = shard.weight[ids - shard.row_offset]
        if not torch.equal(looked_up.float(), expected.float()):
            raise RuntimeError("the sharded lookup returned rows other than the table's")
    finally:
        shutdown()
        os.environ.clear()
        os.environ.update(saved)
    took = time.perf_counter() - started
    return f"ok: 3 ids on {ctx.device} (row_wise, 1 rank, {ctx.backend}) equal the table's rows, {took:.1f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dimerec-env", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a part fails to import or the lookup fails")
    parser.add_argument("--no-lookup", action="store_true", help="versions only")
    add_log_level(parser)
    args = parser.parse_args(argv)
    apply_log_level(args)
    setup_command_logging()
    if not args.log_level:  # the lookup's own lines (its sharding plan) only when asked for
        logging.getLogger("dimerec").setLevel(logging.WARNING)
    report = versions()
    width = max(map(len, [*report, "sharded lookup"]))
    for name, value in report.items():
        print(f"{name:<{width}}  {value}")
    failed = [name for name, value in report.items() if str(value).startswith("DOES NOT IMPORT")]
    if not args.no_lookup:
        try:
            line = sharded_lookup()
        except Exception as exc:
            line = f"FAILED: {type(exc).__name__}: {exc}"[:500]
            failed.append("sharded lookup")
        print(f"{'sharded lookup':<{width}}  {line}")
    if args.check and failed:
        print(f"dimerec-env: {', '.join(failed)} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
