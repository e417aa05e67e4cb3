"""dimerec-export: turn a finished run into a serving bundle (serving/bundle.py).

    dimerec-export --run-dir runs/quick --out bundles/quick
    dimerec-torchrun --standalone --nproc_per_node=4 -m dimerec_dist.serving.export --run-dir R --out B \\
        --dtype int8 --index hnsw

The model is loaded with its table sharded over this job's ranks, exactly as dimerec-eval
loads it; each rank writes the rows it holds, block by block, to its own part file. No
process ever holds the whole table. Rank 0 then writes the vocabulary (raw ids), the
user tower (a torch.export program with a fixed number of reverse steps), the config and
the manifest with every file's SHA-256; with --index it builds a faiss index from the
written parts and reports its recall@50 against exact search on the test users.

The bundle is written beside OUT and swapped in when complete; an existing bundle at OUT
is replaced only with --overwrite, and never left half old, half new (runtime/output_dir.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dimerec_dist.config import ConfigError
from dimerec_dist.data.schema import DataError, Manifest, padded_popularity, read_items
from dimerec_dist.distributed.table_shards import scoring_shards
from dimerec_dist.runtime.cli_numbers import integer, real
from dimerec_dist.runtime.command import run_command
from dimerec_dist.runtime.integrity import files_sha256, sealed
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level
from dimerec_dist.runtime.output_dir import (
    OutputError,
    begin,
    check_target,
    claim,
    on_every_rank,
    publish,
    staging_path,
)
from dimerec_dist.runtime.run_dir import RunDir
from dimerec_dist.runtime.storage import StorageError, cache_key, cache_root, exists, is_remote, local_path, upload_dir
from dimerec_dist.serving.bundle import DTYPES, FORMAT, MANIFEST, SEAL_KEY, VERSION, BundleError
from dimerec_dist.serving.index_tuning import measure_index, tune_index
from dimerec_dist.serving.tower import UserTower, export_tower
from dimerec_dist.training.checkpoint import CheckpointError
from dimerec_dist.training.saved_run import load_saved_run

log = logging.getLogger("dimerec.export")
BLOCK_ROWS = 1 << 16
INDEX_KINDS = ("none", "hnsw", "ivf")
STORED_AS = {"fp32": "float32", "fp16": "float16", "int8": "int8"}  # --dtype -> bundle.json's numpy dtype


def quantize_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: row ~ q * scale, |q| <= 127."""
    scale = np.abs(rows).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    return np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)


def _npy_file(path: Path, dtype, shape: tuple[int, ...]):
    """An open .npy file with its header written, for rows appended in order. Plain writes, not a
    memory map: a full disk is an OSError naming the file, where a map's page write is a SIGBUS."""
    handle = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(handle, header)
    return handle


def write_part(rows: torch.Tensor, first: int, staging: Path, name: str, dtype: str) -> dict:
    """Write rows [first, first + len) in blocks; the part's manifest entry."""
    count, dim = rows.shape
    entry = {"first": first, "last": first + count, "file": f"items/{name}.npy"}
    if dtype == "int8":
        entry["scale_file"] = f"items/{name}.scale.npy"
    with contextlib.ExitStack() as files:
        out = files.enter_context(_npy_file(staging / entry["file"], dtype, (count, dim)))
        scale_out = (
            files.enter_context(_npy_file(staging / entry["scale_file"], np.float32, (count,)))
            if dtype == "int8"
            else None
        )
        for start in range(0, count, BLOCK_ROWS):
            block = rows[start : start + BLOCK_ROWS].detach().cpu().numpy().astype(np.float32)
            if scale_out is not None:
                quantized, scale = quantize_int8(block)
                out.write(quantized.tobytes())
                scale_out.write(scale.tobytes())
            else:
                out.write(block.astype(np.dtype(dtype)).tobytes())
    return entry


def write_vocabulary(manifest_data: Manifest, staging: Path) -> dict:
    """Raw ids by item (row 0, padding, is empty), sorted for binary search, and popularity."""
    items = read_items(manifest_data)
    item_ids = items.column("item_id").to_numpy()
    raw = np.array([b""] + [r.encode() for r in items.column("raw_id").to_pylist()])
    if not np.array_equal(item_ids, np.arange(1, len(item_ids) + 1)):
        raise DataError(f"{manifest_data.root}: items.parquet does not list items 1..{len(item_ids)} in order")
    by_item = np.empty(len(item_ids) + 1, dtype=raw.dtype)
    by_item[:] = raw
    order = np.argsort(by_item[1:], kind="stable") + 1
    popularity = padded_popularity(items)
    files = {
        "by_item": by_item,
        "sorted": by_item[order],
        "sorted_items": order.astype(np.int64),
        "popularity": popularity,
    }
    (staging / "vocabulary").mkdir()
    for key, array in files.items():
        np.save(staging / f"vocabulary/{key}.npy", array)
    return {key: f"vocabulary/{key}.npy" for key in files}


def build_index(staging: Path, dim: int, cosine: bool, kind: str, nprobe: int) -> dict:
    """A faiss index over every row (row r gets id r), inner product on unit rows if cosine."""
    import faiss

    from dimerec_dist.serving.bundle import Bundle

    bundle = Bundle(staging, verify=False)  # written by this job a moment ago; the server verifies it
    total = bundle.num_items + 1

    def blocks():
        for part in bundle.parts:
            for start in range(0, part.last - part.first, BLOCK_ROWS):
                block = part.dense(start, start + BLOCK_ROWS)
                if cosine:
                    block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
                yield np.ascontiguousarray(block, dtype=np.float32)

    started = time.time()
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
        params = {"M": 32, "efConstruction": index.hnsw.efConstruction, "efSearch": 128}
    else:
        nlist = max(1, min(int(4 * math.sqrt(total)), total // 39))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(total, size=min(total, max(39 * nlist, 10_000)), replace=False))
        vectors = bundle.rows(sample)
        if cosine:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        index.nprobe = min(nprobe, nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe}
    for block in blocks():
        index.add(block)
    faiss.write_index(index, str(staging / "index.faiss"))
    return {"file": "index.faiss", "kind": kind, "params": params, "build_s": round(time.time() - started, 2)}


def export(
    run_dir: str | Path,
    out: Path,
    dtype: str,
    index: str,
    steps: int | None,
    nprobe: int,
    overrides: list[str],
    overwrite: bool = False,
    recall: float | None = None,
) -> dict:
    """`recall`: the index's search setting is the cheapest that reaches this recall@50 on the
    validation users (serving/index_tuning.py); None keeps --nprobe and HNSW's efSearch 128.
    `out` may be a URI (s3://...): the bundle is made under the run directory (shared by the
    job's nodes), then uploaded with bundle.json last, and the local one removed."""
    if is_remote(out):
        return _export_to_store(str(out), run_dir, dtype, index, steps, nprobe, overrides, overwrite, recall)
    out = local_path(out)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if index not in INDEX_KINDS:
        raise ConfigError(f"--index {index!r} is not one of {', '.join(INDEX_KINDS)}")
    if recall is not None and (index == "none" or not 0 < recall <= 1):
        raise ConfigError(f"--recall {recall} needs an --index and a value in (0, 1]")
    check_target(out, overwrite, "a serving bundle", MANIFEST)
    run = RunDir.at(run_dir)
    loaded = load_saved_run(run, overrides)
    config, ctx = loaded.config, loaded.ctx
    steps = steps or config.model.sample_steps
    if not 1 <= steps <= config.model.diffusion_steps:
        raise ConfigError(f"--steps {steps} must lie in 1..model.diffusion_steps={config.model.diffusion_steps}")
    staging = staging_path(out)
    held = []

    def take_target() -> None:  # the main rank holds --out until the bundle is in place
        held.append(claim(out, "dimerec-export"))
        check_target(out, overwrite, "a serving bundle", MANIFEST)  # again: another export may have ended
        (begin(out) / "items").mkdir()  # a staging left by an export that died half-way is removed

    try:
        on_every_rank(ctx, take_target, main_only=True)
        started = time.time()
        dim = config.model.embedding_dim
        shards = scoring_shards(loaded.shards, loaded.manifest.num_items + 1, dim, ctx.device)
        gathered = on_every_rank(
            ctx,
            lambda: [
                write_part(shard.weight, shard.row_offset, staging, f"part-{ctx.rank:05d}-{i}", dtype)
                for i, shard in enumerate(shards)
                if shard.weight.shape[0]
            ],
        )
        parts = sorted((p for rank_parts in gathered for p in rank_parts), key=lambda p: p["first"])
        bundle = lambda: _finish_bundle(loaded, run, staging, out, parts, dtype, index, steps, nprobe, recall, started)  # noqa: E731
        return on_every_rank(ctx, bundle, main_only=True)[0] or {}
    finally:
        if held:
            shutil.rmtree(staging, ignore_errors=True)  # what a failed export wrote: nothing once it published
            held[0].release()


def _finish_bundle(loaded, run, staging, out, parts, dtype, index, steps, nprobe, recall, started) -> dict:
    """The main rank: the tower, the vocabulary, the index and bundle.json; then the bundle swapped in."""
    config = loaded.config
    dim = config.model.embedding_dim
    log.info(
        "item table written: %d parts, %d rows, %s, %.1fs",
        len(parts),
        loaded.manifest.num_items + 1,
        dtype,
        time.time() - started,
    )
    tower = UserTower(loaded.model.module.dimerec, steps, config.query_mode())
    export_tower(tower, config.model.max_history, dim, staging / "tower.pt2")
    shutil.copyfile(run.local / "config.yaml", staging / "config.yaml")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_items": loaded.manifest.num_items,
        "dim": dim,
        "dtype": dtype,
        "cosine": config.model.cosine_logits,
        "max_history": config.model.max_history,
        "query_mode": config.query_mode(),
        "steps": steps,
        "parts": parts,
        "vocabulary": write_vocabulary(loaded.manifest, staging),
        "tower": "tower.pt2",
        "config": "config.yaml",
        "index": None,
        "source": {"run_dir": run.remote or str(run.local.resolve()), "exported_by_ranks": loaded.ctx.world_size},
    }
    _write_manifest(staging, manifest)
    if index != "none":
        manifest["index"] = build_index(staging, dim, config.model.cosine_logits, index, nprobe)
        _write_manifest(staging, manifest)
        if recall is not None:
            tuned = tune_index(staging, index, loaded.data.valid, recall)
            manifest["index"]["params"].update(tuned.pop("params"))
            manifest["index"].update(tuned)
            log.info(
                "index %s: %s chosen for recall@50 >= %g on validation users",
                index,
                manifest["index"]["params"],
                recall,
            )
        manifest["index"].update(measure_index(staging, loaded.data.test))
        log.info(
            "index %s: recall@50 %.4f against exact search (%d test users), %.2f ms/query vs exact %.2f",
            index,
            manifest["index"]["recall@50"],
            manifest["index"]["queries"],
            manifest["index"]["index_ms_per_query"],
            manifest["index"]["exact_ms_per_query"],
        )
    _write_manifest(staging, manifest)
    publish(staging, out)
    log.info("bundle written to %s in %.1fs", out, time.time() - started)
    return manifest


def _export_to_store(
    uri: str, run_dir: str | Path, dtype, index, steps, nprobe, overrides, overwrite: bool, recall: float | None
) -> dict:
    try:
        if exists(f"{uri.rstrip('/')}/{MANIFEST}") and not overwrite:
            raise OutputError(f"{uri} holds a serving bundle: it is never overwritten (pass --overwrite)")
        # Made where every rank of the export can write its parts: beside a local run, or in the cache
        # for a store's run (whose working copies are per node); a multi-node export needs it shared.
        run = RunDir.at(run_dir)
        local = (cache_root() / "exports" if run.remote else run.local / ".export") / cache_key(uri)
        manifest = export(run_dir, local, dtype, index, steps, nprobe, overrides, overwrite=True, recall=recall)
        if manifest:  # the main rank: the bundle is complete here
            upload_dir(local, uri, MANIFEST)
            shutil.rmtree(local)
            log.info("bundle uploaded to %s", uri)
    except StorageError as exc:
        raise OutputError(str(exc)) from None
    return manifest


def _write_manifest(staging: Path, manifest: dict) -> None:
    names = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest["checksums"] = dict(zip(names, files_sha256([staging / name for name in names])))
    manifest.pop(SEAL_KEY, None)
    (staging / MANIFEST).write_text(json.dumps(sealed(manifest, SEAL_KEY), indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-export", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="the run's directory, or its URI (s3://...)")
    parser.add_argument("--out", required=True, help="the bundle's directory: a path, or s3://, gs://, ...")
    parser.add_argument(
        "--dtype",
        choices=tuple(STORED_AS),
        default="fp32",
        help="item table storage, in the config's words (model.table_dtype); int8 has a per-row scale",
    )
    parser.add_argument("--index", default="none", help=f"approximate index: {', '.join(INDEX_KINDS)} (needs faiss)")
    parser.add_argument("--nprobe", type=integer(1), default=16, help="ivf: lists searched per query")
    parser.add_argument(
        "--recall",
        type=real(0, 1, above=True),
        default=None,
        help="pick the index's search setting (HNSW efSearch, IVF nprobe) as the cheapest reaching this "
        "recall@50 against exact search on the validation users, e.g. 0.95",
    )
    parser.add_argument(
        "--steps", type=integer(1), default=None, help="reverse steps of the tower (default: the config's)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing bundle at --out (swapped in only when the new one is complete)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value applied to the run's config")
    add_log_level(parser)
    args = parser.parse_args(argv)
    apply_log_level(args)
    return run_command(
        "dimerec-export",
        lambda: export(
            args.run_dir,
            args.out,
            STORED_AS[args.dtype],
            args.index,
            args.steps,
            args.nprobe,
            args.overrides,
            args.overwrite,
            recall=args.recall,
        ),
        (ConfigError, DataError, CheckpointError, BundleError, OutputError, StorageError),
    )


if __name__ == "__main__":
    from dimerec_dist.runtime.process_exit import exit_process

    exit_process(main())
