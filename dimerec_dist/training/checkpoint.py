"""Checkpoints with torch.distributed.checkpoint: the model for evaluation and serving, and
the whole training state for resuming.

Every rank writes its own shards; nothing is gathered. A save goes to `NAME.tmp` and is
renamed to `NAME` by rank 0 only after every rank has finished and meta.json is written,
so a directory without the suffix is always complete, and a save killed half-way leaves
only a `.tmp` that nobody reads (and the next save of that name replaces).

A training checkpoint holds, all through DCP: the sharded table and its fused optimizer
state, the dense weights, and the replicated state (the dense optimizer, the learning-rate
schedule, a data-parallel table's optimizer) as plain tensors whose structure - and every
value that is not a tensor - is JSON in meta.json, beside the step, epoch and position in
the data plan, the best validation score and the config. Nothing is pickled: what DCP holds
is tensors only (a test checks its metadata). No RNG state is needed: every random draw in training derives from
(seed, epoch, step[, rank]).

A checkpoint or model directory may be on an object store (s3://..., the run directory's
place there): DCP's fsspec writer and reader move the shards, and since a store cannot
rename a directory, the directory is complete once meta.json is in it, which is written
last (a save that died half-way leaves one without it, which nobody reads and the next
save of that name removes).

Every file is checksummed: each rank hashes the shards it has just written (while they are
in the page cache), rank 0 the rest, and meta.json lists them with a digest of its own.
Loading verifies them first (the ranks share the files), so a flipped byte or a truncated
shard is refused by name, never loaded; `resume=auto` then falls back to the newest
checkpoint that verifies.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from dimerec_dist.config import (
    MODEL_SHAPE_KEYS,
    ConfigError,
    JobConfig,
    ModelConfig,
    config_from_dict,
    settings_changes,
)
from dimerec_dist.distributed.private_api import cpu_copy, fsspec_storage, is_sharded
from dimerec_dist.runtime import storage
from dimerec_dist.runtime.integrity import file_sha256, files_sha256, mismatches, seal_problem, sealed
from dimerec_dist.runtime.library_noise import drop_warning
from dimerec_dist.runtime.storage import Location, child, is_remote, location

log = logging.getLogger("dimerec.checkpoint")
# TorchRec 1.8's EmbeddingCollection keeps its state in ShardedTensors and offers no DTensor
# state yet; DCP warns on every save and load that ShardedTensor is deprecated.
drop_warning("Please use DTensor instead and we are deprecating ShardedTensor")
META_FILE = "meta.json"
LEGACY_META_FILE = "model.json"  # model directories written by the first trainer version
LEGACY_DENSE_FILE = "dense.pt"  # the pickled optimizer state of checkpoints before 2026-12
SEAL_KEY = "meta_sha256"  # meta.json's digest of itself


class CheckpointError(ValueError):
    pass


def storage_failure(exc: BaseException) -> str | None:
    """What a save's failure says of the disk or store ('rank 1: No space left on device'), or None
    for an error that is not one (a bug: raised as it is). DCP gathers every rank's write errors into
    one CheckpointException; torch.save's writer turns an OSError into a RuntimeError naming errno."""
    failures = getattr(exc, "failures", None)  # DCP's CheckpointException: rank -> (error, traceback)
    if isinstance(failures, dict):
        for rank, failure in sorted(failures.items()):
            error = failure[0] if isinstance(failure, tuple) else failure
            reason = storage_failure(error)
            if reason:
                return f"rank {rank}: {reason}"
        return None
    if isinstance(exc, OSError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else (exc.strerror or str(exc))
    text = str(exc)
    if isinstance(exc, RuntimeError) and ("errno" in text.lower() or "No space left" in text):
        return text.splitlines()[0][:300]
    return None


def _failed_save(
    exc: BaseException, final: Location, staging: Location, kept: str, then: str = ""
) -> CheckpointError | None:
    """A save that failed on the disk or store: its partial files removed (on the main rank), the one
    error every rank raises, naming what was being written and what is still whole (`kept`)."""
    reason = storage_failure(exc)
    if reason is None:
        return None
    if _is_main() and staging != final:
        shutil.rmtree(staging, ignore_errors=True)  # what fit before the disk filled: never a checkpoint
    return CheckpointError(f"{final} could not be written ({reason}); {kept}; free space and launch again{then}")


def _is_main() -> bool:
    return dist.get_rank() == 0


def _commit(staging: Location, final: Location, meta: dict[str, Any], own: dict[str, str]) -> None:
    """Called on every rank after its shards are written and hashed (`own`, _own_file_checksums):
    list every file's checksum in meta.json, then make the checkpoint visible atomically (on a
    store, where staging is the final place, meta.json written last is what does that)."""
    gathered: list[dict[str, str]] = [{}] * dist.get_world_size()
    dist.all_gather_object(gathered, own)  # also the barrier: every rank has written its shards
    if _is_main():
        files = {name: digest for part in gathered for name, digest in part.items()}
        for name in storage.matching(staging, "*"):  # DCP's .metadata: written by rank 0
            if name not in files and name != META_FILE and storage.is_file(child(staging, name)):
                files[name] = file_sha256(child(staging, name))
        text = json.dumps(sealed({**meta, "files": files}, SEAL_KEY), indent=2) + "\n"
        storage.write_bytes(child(staging, META_FILE), text.encode())
        if staging != final:
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
    dist.barrier()


def _hashed_when_written(future: Future, staging: Location) -> dict[str, str]:
    future.result()
    return _own_file_checksums(staging)


def _own_file_checksums(staging: Location) -> dict[str, str]:
    """The shard files this rank wrote: DCP's file-system writers name them __RANK_N.distcp."""
    names = storage.matching(staging, f"__{dist.get_rank()}_*.distcp")
    return dict(zip(names, files_sha256([child(staging, name) for name in names])))


def _written_to(staging: Location) -> dict[str, Any]:
    """DCP's arguments for writing to a place: its fsspec writer for a URI (no fsync there; and no
    checkpoint_id beside it, which would make DCP re-open the store without its endpoint options)."""
    if not is_remote(staging):
        return {"checkpoint_id": str(staging)}
    writer, _ = fsspec_storage()
    return {"storage_writer": writer(staging, sync_files=False, **storage.fs_options(staging))}


def _read_from(path: Location) -> dict[str, Any]:
    if not is_remote(path):
        return {"checkpoint_id": str(path)}
    _, reader = fsspec_storage()
    return {"storage_reader": reader(path, **storage.fs_options(path))}


def verify(path: Location) -> list[str]:
    """What is wrong with the checkpoint or model directory at `path` ([] if every file matches
    its checksum). Collective: the ranks split the files and share what they found. A
    directory written before checksums existed verifies with a warning."""
    path = location(path)
    problems: list[str] = []
    try:
        meta = read_meta(path)
    except CheckpointError as exc:
        meta, problems = {}, [str(exc)]
    if not problems and "files" not in meta:
        log.warning("%s was written before checkpoints carried checksums: loaded unverified", path)
    elif not problems:
        seal = seal_problem(meta, SEAL_KEY, child(path, META_FILE))
        problems = [seal] if seal else []
        mine = sorted(meta["files"])[dist.get_rank() :: dist.get_world_size()]
        problems += mismatches(path, {name: meta["files"][name] for name in mine})
    gathered: list[list[str]] = [[]] * dist.get_world_size()
    dist.all_gather_object(gathered, problems)
    return sorted({problem for part in gathered for problem in part})


def verified(path: Location) -> Location:
    """`path`, once every file of it verifies; else a CheckpointError naming the first bad one."""
    problems = verify(path)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: {problems[0]}{more}")
    return path


def _stage(final: Location) -> Location:
    """Where a save writes: `NAME.tmp` beside a local `NAME`; on a store, `NAME` itself, emptied
    (meta.json going first: from then on nobody reads it as complete)."""
    if is_remote(final):
        if _is_main():
            _remove(final)
        dist.barrier()
        return final
    staging = final.with_name(final.name + ".tmp")
    if _is_main():
        if staging.exists():
            shutil.rmtree(staging)  # a save that was killed half-way
        staging.mkdir(parents=True)
    dist.barrier()
    return staging


def _remove(path: Location) -> None:
    """A checkpoint or model directory removed, meta.json first: no longer complete, however far
    the rest's removal gets (a store removes a directory object by object)."""
    storage.remove_tree(child(path, META_FILE))
    storage.remove_tree(path)


def model_meta(num_items: int, model_config: ModelConfig, **extra: Any) -> dict[str, Any]:
    return {"num_items": num_items, "model": dataclasses.asdict(model_config), **extra}


def save_model(model, path: Location, num_items: int, model_config: ModelConfig, extra: dict | None = None) -> None:
    """The model's weights only (what evaluation and export read); the one before stays whole if the
    disk fills while the new one is written."""
    path = location(path)
    staging = _stage(path)
    try:
        dcp.save(model.state_dict(), **_written_to(staging))
        _commit(staging, path, model_meta(num_items, model_config, **(extra or {})), _own_file_checksums(staging))
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        failed = _failed_save(exc, path, staging, "the model saved before it and the checkpoints are intact")
        if failed is None:
            raise
        raise failed from None


def check_resumable(path: Location) -> None:
    """Refuse, before anything is built, a checkpoint whose optimizer state is a pickle (the
    layout before 2026-12): this version never unpickles."""
    if storage.is_file(child(location(path), LEGACY_DENSE_FILE)) or "replicated" not in read_meta(path):
        raise CheckpointError(
            f"{path} was written by an earlier dimerec-dist, whose optimizer state is a pickle "
            f"({LEGACY_DENSE_FILE}) that this version never loads; resume it with the version "
            f"that wrote it, or start a new --run-dir"
        )


def check_optimizer_layout(path: Location, sharding_type: str, column_block: int) -> None:
    """Refuse to resume table optimizer state laid out for another kind of sharding.

    Row- and table-wise states reshard freely (one Adagrad accumulator per row). A
    column-wise run keeps one per row *and column block*, and a data-parallel table's
    state lives with the dense state: neither maps onto another layout.
    `column_block` is this job's resolved block width (distributed.sharding.resolved_column_block)."""
    from dimerec_dist.distributed.sharding import resolved_column_block

    meta = read_meta(path)
    saved = meta.get("config", {}).get("sharding", {})
    saved_type = saved.get("type", "row_wise")

    def layout(kind: str, block: int) -> str:
        return {"column_wise": f"column_wise (blocks of {block} columns)", "data_parallel": "data_parallel"}.get(
            kind, "row- or table-wise"
        )

    saved_block = (
        resolved_column_block(saved.get("column_block", 0), meta["model"]["embedding_dim"], meta.get("world_size", 1))
        if saved_type == "column_wise"
        else 0
    )
    current_block = column_block if sharding_type == "column_wise" else 0
    if layout(saved_type, saved_block) != layout(sharding_type, current_block):
        raise CheckpointError(
            f"{path}: its table optimizer state is laid out for "
            f"{layout(saved_type, saved_block)}, this job shards the table "
            f"{layout(sharding_type, current_block)}; resume with that layout, or load the "
            f"run's weights in a new run"
        )


def read_meta(path: Location) -> dict[str, Any]:
    for name in (META_FILE, LEGACY_META_FILE):
        file = child(location(path), name)
        if storage.is_file(file):
            try:
                meta = json.loads(storage.read_bytes(file))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{file} is not valid JSON (truncated or corrupted: {exc})") from None
            if not isinstance(meta, dict) or "num_items" not in meta or "model" not in meta:
                raise CheckpointError(f"{file} is not a dimerec checkpoint's metadata")
            return meta
    raise CheckpointError(f"{path} is not a complete dimerec checkpoint (no {META_FILE})")


def check_compatible(path: Location, num_items: int, model_config: ModelConfig) -> dict:
    """Refuse, before anything is loaded, weights saved for another catalog or model shape."""
    meta = read_meta(path)
    if meta["num_items"] != num_items:
        raise CheckpointError(f"{path}: saved for a catalog of {meta['num_items']} items, this job has {num_items}")
    ours = dataclasses.asdict(model_config)
    differ = [
        f"{k} (saved {meta['model'].get(k)!r}, now {ours[k]!r})"
        for k in MODEL_SHAPE_KEYS
        if meta["model"].get(k) != ours[k]
    ]
    # Guidance dropout's share is a training setting, but whether it is 0 decides if the model
    # holds a learned null guidance.
    saved_null, our_null = meta["model"].get("guidance_dropout", 0.0) > 0, model_config.guidance_dropout > 0
    if saved_null != our_null:
        differ.append(
            f"null guidance (saved {'with' if saved_null else 'without'} one, now "
            f"{'with' if our_null else 'without'}: model.guidance_dropout)"
        )
    if differ:
        raise CheckpointError(f"{path}: saved by a different model: {', '.join(differ)}")
    return meta


def saved_streams(meta: dict[str, Any]) -> int:
    """The data plan's stream count the checkpoint was trained with (data.streams=0: its world size)."""
    return meta.get("config", {}).get("data", {}).get("streams", 0) or meta.get("world_size", 1)


def check_data_plan(path: Location, config: JobConfig, world_size: int) -> None:
    """The epoch plan depends on the number of data streams, which by default (data.streams=0)
    is the world size: resuming on another world size with it would re-plan the epoch half-way
    (some samples twice, some never). Refuse that, naming the setting that resumes exactly."""
    meta = read_meta(path)
    before, now = saved_streams(meta), config.data.streams or world_size
    if before != now:
        raise CheckpointError(
            f"{path}: trained with {before} data streams ({meta.get('world_size', 1)} rank(s)), this job would "
            f"use {now} on {world_size} rank(s), which re-plans the epoch half-way; set data.streams={before} "
            f"(the world size must divide it) to resume exactly on any world size"
        )


def check_same_settings(path: Location, config: JobConfig, named: bool, world_size: int = 1) -> None:
    """Resuming a run with settings other than it was saved with would make one result of two
    jobs. resume=auto refuses (it is what a restarted or re-launched job does unasked); a
    checkpoint named in train.resume continues with the new settings, and the log says which.
    data.streams is compared as resolved (0 is the world size): check_data_plan judges it."""
    meta = read_meta(path)
    try:
        saved = config_from_dict(meta.get("config", {}), f"{path}/{META_FILE}")
        saved.data.streams = saved_streams(meta)
        ours = copy.deepcopy(config)
        ours.data.streams = config.data.streams or world_size
        changes = settings_changes(saved, ours)
    except ConfigError as exc:
        changes = [f"its saved settings no longer load ({exc})"]
    if not changes:
        return
    if named:
        log.warning("resuming %s with other settings: %s", path, "; ".join(changes))
        return
    raise CheckpointError(
        f"{path}: saved with other settings than this job's: {'; '.join(changes)}. "
        f"Use a new --run-dir for the new settings, or name the checkpoint "
        f"(train.resume={path}) to continue it with them"
    )


def dataset_record(root: str | Path, identity: str) -> dict[str, str]:
    return {"path": str(root), "identity": identity}


def check_same_dataset(path: Location, root: str | Path, identity: str, other_data_allowed: bool) -> None:
    """Refuse to resume a checkpoint on another dataset than it was trained on (a data.path pointing
    elsewhere, or the dataset at it prepared again from other data): its plan, popularity and
    held-out users would silently be another run's. train.resume_other_data=true allows it (logged)."""
    saved = read_meta(path).get("dataset")
    if saved is None or saved["identity"] == identity:
        return  # the same data (or a checkpoint from before datasets were recorded)
    if other_data_allowed:
        log.warning(
            "resuming %s, trained on %s, on another dataset: %s (train.resume_other_data)", path, saved["path"], root
        )
        return
    raise CheckpointError(
        f"{path} was trained on another dataset ({saved['path']}, identity {saved['identity'][:12]}), not "
        f"{root} (identity {identity[:12]}); point data.path at that dataset, or set "
        f"train.resume_other_data=true to warm-start from it on this one"
    )


def load_model(model, path: Location, num_items: int, model_config: ModelConfig) -> dict:
    path = location(path)
    meta = check_compatible(verified(path), num_items, model_config)
    state = model.state_dict()
    dcp.load(state, **_read_from(path))
    model.load_state_dict(state)
    return meta


# --------------------------------------------------------------------------- training state


@dataclass
class TrainingState:
    """Where training stands: enough, with the weights, to continue as if never stopped."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch the next step belongs to
    epoch_step: int = 0  # steps done within that epoch (the data plan's position)
    best_score: float = -1.0
    train_seconds: float = 0.0  # wall-clock time spent in training so far (train.max_minutes)
    stale_validations: int = 0  # validations in a row that did not beat best_score (train.patience)


class CheckpointManager:
    """`run_dir/checkpoints/step-XXXXXXXX` (a directory, or a place on a store), the last `keep` of them kept.

    With `asynchronous`, the sharded state is copied to CPU staging memory and written by a
    background thread (on a process group of its own, so its collectives never interleave
    with training's) while training goes on; the checkpoint is committed at the next save,
    or at `wait()`, which every rank calls at the same step.
    """

    def __init__(self, root: Location, keep: int = 2, asynchronous: bool = False):
        self.root, self.keep, self.asynchronous = location(root), keep, asynchronous
        self._group = dist.new_group(backend="gloo") if asynchronous else None
        self._background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") if asynchronous else None
        self._pending: tuple | None = None
        self.last_saved_step: int | None = None

    def path_for(self, step: int) -> Location:
        return child(self.root, f"step-{step:08d}")

    def complete(self) -> list[Location]:
        """Complete checkpoints, oldest first (a `.tmp` or a directory without meta.json is not one)."""
        marked = storage.matching(self.root, f"step-*/{META_FILE}")  # one listing, also on a store
        names = {name.split("/")[0] for name in marked}
        return [child(self.root, name) for name in sorted(names) if not name.endswith(".tmp")]

    def latest(self) -> Location | None:
        done = self.complete()
        return done[-1] if done else None

    def latest_verified(self) -> Location | None:
        """The newest complete checkpoint whose files all match their checksums; each newer one
        that does not is logged with why, and kept for a person to look at. Collective."""
        done = self.complete()
        for path in reversed(done):
            problems = verify(path)
            if not problems:
                return path
            log.warning("not resuming from %s: %s", path, "; ".join(problems))
        if done:
            raise CheckpointError(
                f"{self.root}: none of the {len(done)} checkpoint(s) verifies (newest: "
                f"{done[-1].name}); nothing was loaded or changed - name one to inspect with "
                f"train.resume=PATH, or start a new --run-dir"
            )
        return None

    def save(
        self,
        model,
        replicated: dict[str, Any],
        state: TrainingState,
        num_items: int,
        config_dict: dict,
        dataset: dict | None = None,
    ) -> Location:
        """`replicated`: state that is the same on every rank (name -> a state_dict of tensors,
        numbers, strings, lists and dicts), e.g. the dense optimizer's and the schedule's. `dataset`:
        which data it was trained on (dataset_record), checked by check_same_dataset at resume."""
        self.wait()
        started = time.time()
        final = self.path_for(state.step)
        staging = _stage(final)
        skeleton, tensors = tensor_tree(replicated)
        meta = model_meta(
            num_items,
            _model_config(config_dict),
            training=dataclasses.asdict(state),
            config=config_dict,
            world_size=dist.get_world_size(),
            saved_at=time.time(),
            replicated=skeleton,
            **({"dataset": dataset} if dataset else {}),
        )
        sharded = {**_sharded_state(model), REPLICATED_KEY: tensors}
        self.last_saved_step = state.step
        if self.asynchronous:
            future = dcp.async_save(
                sharded,
                **_written_to(staging),
                process_group=self._group,
                async_stager=_CopyStager(),
            )
            # The shards are hashed in the background too, once written: training waits for neither.
            hashed = self._background.submit(_hashed_when_written, future, staging)
            self._pending = (hashed, staging, final, meta, started)
            log.info("checkpoint %s staged in %.1fs, writing in the background", final, time.time() - started)
        else:
            try:
                dcp.save(sharded, **_written_to(staging))
                self._finish(staging, final, meta, started, _own_file_checksums(staging))
            except BaseException as exc:  # DCP's CheckpointException is a BaseException
                self._raise_failed(exc, final, staging)
        return final

    def wait(self) -> None:
        """Commit the background save, if one is running (collective: every rank calls it)."""
        if self._pending is not None:
            hashed, staging, final, meta, started = self._pending
            self._pending = None
            try:
                self._finish(staging, final, meta, started, hashed.result())
            except BaseException as exc:  # DCP's CheckpointException is a BaseException
                self._raise_failed(exc, final, staging)

    def _raise_failed(self, exc: BaseException, final: Location, staging: Location) -> None:
        newest = self.latest()
        kept = f"the newest whole one, {newest.name}, is intact" if newest else "no earlier checkpoint exists"
        failed = _failed_save(exc, final, staging, kept, then=" (resume=auto continues)")
        if failed is None:
            raise exc
        self.last_saved_step = None
        raise failed from None

    def _finish(self, staging: Location, final: Location, meta: dict, started: float, own: dict[str, str]) -> None:
        _commit(staging, final, meta, own)
        if _is_main():
            for old in self.complete()[: -self.keep]:
                _remove(old)
        log.info("checkpoint %s written in %.1fs", final, time.time() - started)

    @staticmethod
    def load(
        path: Location, model, num_items: int, model_config: ModelConfig, verify: bool = True
    ) -> tuple[TrainingState, dict]:
        """Load weights and sparse optimizer state in place (any world size or sharding); return the
        training state and the replicated state as it was given to `save`. `verify=False` only for a
        path that was just verified (resume picks one by verifying it: hashing it twice costs a
        second read of the whole table)."""
        meta = check_compatible(verified(path) if verify else path, num_items, model_config)
        if "training" not in meta:
            raise CheckpointError(f"{path} holds model weights only, not a training state to resume")
        check_resumable(path)
        state = {**_sharded_state(model), REPLICATED_KEY: empty_tensors(meta["replicated"])}
        dcp.load(state, **_read_from(location(path)))
        model.load_state_dict(state["model"])
        if "sparse_optimizer" in state:
            model.fused_optimizer.load_state_dict(state["sparse_optimizer"])
        return TrainingState(**meta["training"]), rebuilt(meta["replicated"], state[REPLICATED_KEY])


# --------------------------------------------------------------------------- replicated state as tensors + JSON

REPLICATED_KEY = "replicated"


def tensor_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """(skeleton, tensors): `tree` with each tensor replaced by a placeholder naming it, its shape
    and dtype, and the tensors by name. Dicts become {"items": [[key, value], ...]} so int keys
    stay ints; tuples become lists. The skeleton is plain JSON."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            name = str(len(tensors))
            tensors[name] = node.detach()
            return {"tensor": name, "shape": list(node.shape), "dtype": str(node.dtype).removeprefix("torch.")}
        if isinstance(node, dict):
            return {"items": [[key, walk(value)] for key, value in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(value) for value in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot checkpoint a {type(node).__name__} as replicated state")

    return walk(tree), tensors


def empty_tensors(skeleton: Any) -> dict[str, torch.Tensor]:
    """Tensors of the skeleton's shapes and dtypes, for DCP to load into."""
    found: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict) and "tensor" in node:
            found[node["tensor"]] = torch.empty(node["shape"], dtype=getattr(torch, node["dtype"]))
        elif isinstance(node, dict):
            for _, value in node["items"]:
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(skeleton)
    return found


def rebuilt(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The tree `tensor_tree` was given, from its skeleton and the (loaded) tensors."""
    if isinstance(skeleton, dict) and "tensor" in skeleton:
        return tensors[skeleton["tensor"]]
    if isinstance(skeleton, dict):
        return {key: rebuilt(value, tensors) for key, value in skeleton["items"]}
    if isinstance(skeleton, list):
        return [rebuilt(value, tensors) for value in skeleton]
    return skeleton


def _sharded_state(model) -> dict[str, Any]:
    """What DCP saves and loads for training: weights, and the fused optimizer's state where this
    rank holds table rows (table-wise sharding can leave a rank with none, and no state)."""
    state = {"model": model.state_dict()}
    sparse = model.fused_optimizer.state_dict()
    if sparse.get("state"):
        state["sparse_optimizer"] = sparse
    return state


class _CopyStager:
    """Stages a training state for a background save: a CPU copy that training can no longer
    change. (DCP's default stager cannot copy TorchRec's ShardedTensors.)"""

    should_synchronize_after_execute = False

    def stage(self, state: Any) -> Any:
        if isinstance(state, dict):
            return {key: self.stage(value) for key, value in state.items()}
        if is_sharded(state):
            return cpu_copy(state)
        if isinstance(state, torch.Tensor):
            return state.detach().to("cpu", copy=True)
        return copy.deepcopy(state)

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


def _model_config(config_dict: dict) -> ModelConfig:
    return ModelConfig(**config_dict["model"])
