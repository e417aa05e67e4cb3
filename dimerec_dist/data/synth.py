"""dimerec-synth: synthetic short-video logs with planted interests, at any scale.

The generative story, per user:
- items belong to categories; item popularity is Zipf over the whole catalog;
- a user holds a few latent interests (categories, with Dirichlet weights) that drift:
  at a new session, with probability `drift`, one interest is replaced by another;
- events come in sessions; a session follows one interest (drawn by weight) and its
  items are drawn by popularity within that interest's category, with a little noise
  from the whole catalog; each event has a watch ratio, higher on the user's interests.

Every user is generated from its own random stream (seed, user) and shards cover fixed
user ranges, so the output is the same whatever the number of workers. Shards are
written in parallel by Ray tasks (`--backend ray`, RAY_ADDRESS or a local Ray), local
processes (`processes`) or in this process (`local`). Beside the log: each user's
planted interests at the end of its log (interests.parquet) and each item's category
(item_categories.parquet), so a trained model can be checked against them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dimerec_dist.data.schema import Manifest, read_items
from dimerec_dist.runtime.cli_numbers import integer, real
from dimerec_dist.runtime.log_level import add_log_level, apply_log_level, setup_command_logging
from dimerec_dist.runtime.output_dir import OutputError, begin, check_target, claim, os_error_line, publish

log = logging.getLogger("dimerec.synth")

CATEGORIES_FILE = "item_categories.parquet"  # beside the log: each raw item id's category


def item_categories(manifest: Manifest, synth_dir: Path | None = None) -> np.ndarray | None:
    """Category of every dense item id (index 0, padding: -1) when the dataset was made by
    dimerec-synth (its output in `synth_dir`, default raw/ beside the prepared files), else None."""
    path = Path(synth_dir or Path(manifest.root) / "raw") / CATEGORIES_FILE
    if not path.is_file():
        return None
    by_raw = pq.read_table(path).column("category").to_numpy()
    raw_items = read_items(manifest).column("raw_id").to_numpy(zero_copy_only=False).astype(np.int64)
    return np.concatenate([[-1], by_raw[raw_items]])


BACKENDS = ("local", "processes", "ray")


@dataclass
class SynthOptions:
    users: int = 5000
    items: int = 2000
    events: int = 200_000
    seed: int = 0
    categories: int = 40
    zipf_exponent: float = 1.0
    max_interests: int = 3
    mean_session: float = 6.0
    drift: float = 0.15
    noise: float = 0.05
    users_per_shard: int = 50_000


OPTION_HELP = {
    "users": "users in the log",
    "items": "items in the catalog",
    "events": "events in all (about; every user has at least one session)",
    "seed": "the log is a function of the seed and the options, whatever --workers",
    "categories": "item categories (a user's interests are categories)",
    "zipf_exponent": "item popularity is Zipf with this exponent",
    "max_interests": "interests a user holds at most",
    "mean_session": "mean events per session (a session follows one interest)",
    "drift": "share of sessions that replace one interest by another",
    "noise": "share of events drawn from the whole catalog instead of the session's interest",
    "users_per_shard": "users per Parquet shard of events/",
}

# What each option may be: checked when parsed, before anything is written.
OPTION_RANGES = {
    "users": integer(1),
    "items": integer(2),
    "events": integer(1),
    "seed": integer(0),
    "categories": integer(1),
    "zipf_exponent": real(0),
    "max_interests": integer(1),
    "mean_session": real(1),
    "drift": real(0, 1),
    "noise": real(0, 1),
    "users_per_shard": integer(1),
}
MARKER = "synth.json"  # a synthetic log's own file: what --overwrite recognises


@dataclass
class Catalog:
    category: np.ndarray  # (items,) category of each item (0-based item index)
    members: np.ndarray  # items grouped by category
    segment_cdf: np.ndarray  # category c's popularity CDF, shifted to (c, c + 1]
    category_weight: np.ndarray  # how often a category is chosen as an interest


def build_catalog(options: SynthOptions) -> Catalog:
    rng = np.random.default_rng([options.seed, 0xCA7A106])
    popularity = 1.0 / np.arange(1, options.items + 1) ** options.zipf_exponent
    popularity = popularity[rng.permutation(options.items)]
    category = rng.integers(0, options.categories, options.items)
    category[: options.categories] = np.arange(min(options.categories, options.items))  # no empty category
    members = np.argsort(category, kind="stable")
    grouped = category[members]
    within = np.zeros(options.items)
    weight = np.zeros(options.categories)
    for c in range(options.categories):  # categories, not events: cheap
        rows = np.flatnonzero(grouped == c)
        mass = popularity[members[rows]]
        within[rows] = np.cumsum(mass) / mass.sum()
        weight[c] = mass.sum()
    return Catalog(category, members, grouped + within, weight / weight.sum())


def events_per_user(options: SynthOptions) -> np.ndarray:
    """Heavy-tailed activity, at least 5 events each, summing to about options.events."""
    rng = np.random.default_rng([options.seed, 0xAC71])
    weight = rng.lognormal(0.0, 0.8, options.users)
    return np.maximum(5, np.round(weight / weight.sum() * options.events)).astype(np.int64)


def generate_user(user: int, count: int, catalog: Catalog, options: SynthOptions) -> dict[str, np.ndarray]:
    """One user's log, vectorised over its sessions and events."""
    rng = np.random.default_rng([options.seed, 1, user])
    num_categories = len(catalog.category_weight)
    m = int(rng.integers(1, options.max_interests + 1))
    initial = rng.choice(num_categories, m, replace=False, p=catalog.category_weight)
    weights = rng.dirichlet(np.ones(m))
    # Sessions covering exactly `count` events.
    lengths = rng.geometric(1.0 / options.mean_session, size=count)
    ends = np.cumsum(lengths)
    sessions = int(np.searchsorted(ends, count)) + 1
    lengths = lengths[:sessions]
    lengths[-1] -= ends[sessions - 1] - count
    # Drift: each slot's category at a session is the last assignment to it so far.
    drifts = rng.random(sessions) < options.drift
    drifts[0] = False
    drift_slot = rng.integers(m, size=sessions)
    drift_category = rng.choice(num_categories, size=sessions, p=catalog.category_weight)
    slot_category = np.empty((m, sessions), np.int64)
    for slot in range(m):
        # Assignment 0 is the initial interest; then each drift that hit this slot.
        changes = np.flatnonzero(drifts & (drift_slot == slot))
        assigned = np.concatenate([[initial[slot]], drift_category[changes]])
        slot_category[slot] = assigned[np.searchsorted(changes, np.arange(sessions), side="right")]
    session_category = slot_category[rng.choice(m, size=sessions, p=weights), np.arange(sessions)]
    # Items: by popularity within each event's category, plus catalog-wide noise.
    event_category = np.repeat(session_category, lengths)
    position = np.searchsorted(catalog.segment_cdf, event_category + rng.random(count))
    items = catalog.members[np.minimum(position, len(catalog.members) - 1)]
    noisy = rng.random(count) < options.noise
    items[noisy] = rng.integers(0, len(catalog.category), int(noisy.sum()))
    # Time: seconds between videos inside a session, hours to days between sessions.
    gaps = rng.integers(5, 120, count)
    session_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[session_starts] = rng.integers(3600, 3 * 86400, sessions)
    times = int(rng.integers(0, 30 * 86400)) + np.cumsum(gaps)
    final = slot_category[:, -1]
    liked = np.isin(catalog.category[items], final)
    watch = np.where(liked, rng.beta(5, 2, count), rng.beta(2, 5, count)).astype(np.float32)
    return {"items": items, "times": times, "watch": watch, "interests": final, "weights": weights}


def write_shard(out: str, index: int, first_user: int, last_user: int, options: SynthOptions) -> dict:
    """Generate users [first_user, last_user) and write events/part-INDEX.parquet and its planted interests."""
    catalog = build_catalog(options)
    counts = events_per_user(options)
    parts, planted = [], {"user": [], "categories": [], "weights": []}
    for user in range(first_user, last_user):
        out_user = generate_user(user, int(counts[user]), catalog, options)
        parts.append((np.full(len(out_user["items"]), user), out_user["items"], out_user["times"], out_user["watch"]))
        planted["user"].append(user)
        planted["categories"].append(out_user["interests"].tolist())
        planted["weights"].append(out_user["weights"].tolist())
    columns = [np.concatenate(column) for column in zip(*parts)]
    events = pa.table({"user": columns[0], "item": columns[1], "time": columns[2], "watch_ratio": columns[3]})
    root = Path(out)
    pq.write_table(events, root / "events" / f"part-{index:05d}.parquet", row_group_size=1 << 20)
    pq.write_table(
        pa.table(
            {
                "user": pa.array(planted["user"], pa.int64()),
                "categories": pa.array(planted["categories"], pa.list_(pa.int64())),
                "weights": pa.array(planted["weights"], pa.list_(pa.float64())),
            }
        ),
        root / "interests" / f"part-{index:05d}.parquet",
    )
    return {"index": index, "events": events.num_rows}


def _run_local(jobs: list[tuple], options: SynthOptions, workers: int) -> Iterator[dict]:
    for job in jobs:
        yield write_shard(*job, options)


def _run_processes(jobs: list[tuple], options: SynthOptions, workers: int) -> Iterator[dict]:
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(write_shard, *zip(*jobs), [options] * len(jobs))


def _run_ray(jobs: list[tuple], options: SynthOptions, workers: int) -> Iterator[dict]:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        address = os.environ.get("RAY_ADDRESS")
        ray.init(
            address=address, **({} if address else {"num_cpus": workers}), include_dashboard=False, log_to_driver=False
        )
    task = ray.remote(num_cpus=1)(write_shard)
    pending, queue = [], list(jobs)
    try:
        while queue or pending:  # at most `workers` shards in flight
            while queue and len(pending) < workers:
                pending.append(task.remote(*queue.pop(0), options))
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started_here:
            ray.shutdown()


def synthesize(
    out: Path, options: SynthOptions, workers: int = 1, backend: str = "local", overwrite: bool = False
) -> dict:
    """Write events/, interests.parquet, item_categories.parquet and synth.json under `out`.

    Like a prepared dataset, a log is never written over: a non-empty `out` is refused unless
    `overwrite` and it is a synthetic log already, and the new log is written beside it and
    swapped in whole (no shard of an older, larger log survives next to it)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} ({', '.join(BACKENDS)})")
    out = Path(out)
    with claim(out, "dimerec-synth"):
        check_target(out, overwrite, "a synthetic log", MARKER)
        staging = begin(out)
        try:
            summary = _synthesize_into(staging, options, workers, backend)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        publish(staging, out)
    log.info(
        "wrote %d events for %d users to %s in %.1fs (%.0f events/s)",
        summary["events"],
        options.users,
        out,
        summary["seconds"],
        summary["events"] / max(summary["seconds"], 1e-9),
    )
    return summary


def _synthesize_into(out: Path, options: SynthOptions, workers: int, backend: str) -> dict:
    started = time.time()
    for folder in ("events", "interests"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    bounds = list(range(0, options.users, options.users_per_shard)) + [options.users]
    jobs = [(str(out), index, first, last) for index, (first, last) in enumerate(zip(bounds[:-1], bounds[1:]))]
    run = {"local": _run_local, "processes": _run_processes, "ray": _run_ray}[backend]
    events = 0
    for done, result in enumerate(run(jobs, options, max(workers, 1)), start=1):
        events += result["events"]
        rate = events / max(time.time() - started, 1e-9)
        log.info(
            "shard %d/%d: %d events so far, %.0f events/s, ETA %.0fs",
            done,
            len(jobs),
            events,
            rate,
            (options.events - events) / max(rate, 1e-9),
        )
    planted = pq.read_table(out / "interests")
    pq.write_table(planted.sort_by("user"), out / "interests.parquet")
    catalog = build_catalog(options)
    pq.write_table(
        pa.table({"item": pa.array(np.arange(options.items)), "category": pa.array(catalog.category)}),
        out / CATEGORIES_FILE,
    )
    summary = {
        "options": asdict(options),
        "events": events,
        "shards": len(jobs),
        "workers": workers,
        "backend": backend,
        "seconds": round(time.time() - started, 2),
    }
    (out / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the log's directory (events/ and its side files)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the synthetic log at --out whole (swapped in when complete)"
    )
    parser.add_argument("--workers", type=integer(1), default=1, help="shards written at once (Ray tasks or processes)")
    parser.add_argument(
        "--backend", choices=BACKENDS, default=None, help="default: ray with several workers, local with one"
    )
    defaults = SynthOptions()
    for name, value in asdict(defaults).items():
        flag = f"--{name.replace('_', '-')}"
        help_text = f"{OPTION_HELP[name]} (default {value})"
        parser.add_argument(flag, type=OPTION_RANGES[name], default=value, help=help_text)
    add_log_level(parser)
    args = parser.parse_args(argv)
    if args.max_interests > args.categories:
        parser.error(f"--max-interests {args.max_interests} is more than --categories {args.categories}")
    if args.categories > args.items:
        parser.error(f"--categories {args.categories} is more than --items {args.items}")
    apply_log_level(args)
    setup_command_logging()
    backend = args.backend or ("ray" if args.workers > 1 else "local")
    options = SynthOptions(**{k: getattr(args, k) for k in asdict(defaults)})
    try:
        synthesize(args.out, options, args.workers, backend, overwrite=args.overwrite)
    except OutputError as exc:
        print(f"dimerec-synth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full or read-only disk: where, and what the OS said
        print(f"dimerec-synth: error: {os_error_line(exc, writing=args.out)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
