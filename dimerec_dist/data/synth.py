"""Synthetic short-video logs with planted interests (the quickstart's data, and tests').

The generative story, per user:
- items belong to categories; item popularity is Zipf over the whole catalog;
- a user holds a few latent interests (categories, with Dirichlet weights), which drift:
  at each new session, with probability `drift`, one interest is replaced by another;
- events come in sessions; a session follows one interest (drawn by weight), and its
  items are drawn by popularity within that interest's category, with a little noise
  from the whole catalog;
- each event has a watch ratio, higher on items of the user's interests.

Every user is generated from its own random stream (seed, user), so the output does not
depend on how users are split between workers. Written beside the log: the planted
interests of each user (at the end of its log) and each item's category.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger("dimerec.synth")


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
    users_per_shard: int = 100_000


@dataclass
class Catalog:
    category: np.ndarray  # (items,) category of item i (0-based item index)
    popularity: np.ndarray  # (items,) Zipf weight
    members: list[np.ndarray]  # items of each category
    member_cdf: list[np.ndarray]  # cumulative popularity within each category
    category_weight: np.ndarray  # how often a category is chosen as an interest


def build_catalog(options: SynthOptions) -> Catalog:
    rng = np.random.default_rng([options.seed, 0xCA7A106])
    popularity = 1.0 / np.arange(1, options.items + 1) ** options.zipf_exponent
    popularity = popularity[rng.permutation(options.items)]
    category = rng.integers(0, options.categories, options.items)
    category[: options.categories] = np.arange(min(options.categories, options.items))  # no empty category
    members = [np.flatnonzero(category == c) for c in range(options.categories)]
    member_cdf = [np.cumsum(popularity[m]) / popularity[m].sum() for m in members]
    category_weight = np.array([popularity[m].sum() for m in members])
    return Catalog(category, popularity, members, member_cdf, category_weight / category_weight.sum())


def events_per_user(options: SynthOptions) -> np.ndarray:
    """Heavy-tailed activity, at least 5 events each, summing to about options.events."""
    rng = np.random.default_rng([options.seed, 0xAC71])
    weight = rng.lognormal(0.0, 0.8, options.users)
    counts = np.maximum(5, np.round(weight / weight.sum() * options.events)).astype(np.int64)
    return counts


def generate_user(user: int, count: int, catalog: Catalog, options: SynthOptions) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([options.seed, 1, user])
    num_interests = int(rng.integers(1, options.max_interests + 1))
    interests = rng.choice(len(catalog.members), num_interests, replace=False, p=catalog.category_weight)
    weights = rng.dirichlet(np.ones(num_interests))
    items = np.empty(count, np.int64)
    times = np.empty(count, np.int64)
    clock = int(rng.integers(0, 30 * 86400))
    position = 0
    while position < count:
        if position and rng.random() < options.drift:  # interest drift between sessions
            slot = int(rng.integers(num_interests))
            others = np.setdiff1d(np.arange(len(catalog.members)), interests)
            interests[slot] = rng.choice(others, p=catalog.category_weight[others] / catalog.category_weight[others].sum())
        length = min(count - position, int(rng.geometric(1.0 / options.mean_session)))
        category = interests[rng.choice(num_interests, p=weights)]
        draws = np.searchsorted(catalog.member_cdf[category], rng.random(length))
        chosen = catalog.members[category][np.minimum(draws, len(catalog.members[category]) - 1)]
        noisy = rng.random(length) < options.noise
        chosen[noisy] = rng.integers(0, len(catalog.category), int(noisy.sum()))
        items[position:position + length] = chosen
        times[position:position + length] = clock + np.cumsum(rng.integers(5, 120, length))
        clock = int(times[position + length - 1]) + int(rng.integers(3600, 3 * 86400))
        position += length
    liked = np.isin(catalog.category[items], interests)
    watch = np.clip(np.where(liked, rng.beta(5, 2, count), rng.beta(2, 5, count)), 0, 1)
    return {"items": items, "times": times, "watch": watch.astype(np.float32), "interests": interests,
            "weights": weights}


def generate_shard(first_user: int, last_user: int, counts: np.ndarray, catalog: Catalog,
                   options: SynthOptions) -> tuple[pa.Table, pa.Table]:
    users, items, times, watch = [], [], [], []
    planted_users, planted_interests, planted_weights = [], [], []
    for user in range(first_user, last_user):
        out = generate_user(user, int(counts[user]), catalog, options)
        users.append(np.full(len(out["items"]), user)), items.append(out["items"]), times.append(out["times"])
        watch.append(out["watch"])
        planted_users.append(user), planted_interests.append(out["interests"].tolist())
        planted_weights.append(out["weights"].tolist())
    events = pa.table({"user": pa.array(np.concatenate(users)), "item": pa.array(np.concatenate(items)),
                       "time": pa.array(np.concatenate(times)), "watch_ratio": pa.array(np.concatenate(watch))})
    planted = pa.table({"user": pa.array(planted_users, pa.int64()),
                        "categories": pa.array(planted_interests, pa.list_(pa.int64())),
                        "weights": pa.array(planted_weights, pa.list_(pa.float64()))})
    return events, planted


def synthesize(out: Path, options: SynthOptions) -> dict:
    """Write events/part-*.parquet, interests.parquet, item_categories.parquet and synth.json."""
    started = time.time()
    catalog = build_catalog(options)
    counts = events_per_user(options)
    (out / "events").mkdir(parents=True, exist_ok=True)
    planted_tables = []
    bounds = list(range(0, options.users, options.users_per_shard)) + [options.users]
    for index, (first, last) in enumerate(zip(bounds[:-1], bounds[1:])):
        events, planted = generate_shard(first, last, counts, catalog, options)
        pq.write_table(events, out / "events" / f"part-{index:05d}.parquet", row_group_size=65536)
        planted_tables.append(planted)
    pq.write_table(pa.concat_tables(planted_tables), out / "interests.parquet")
    pq.write_table(pa.table({"item": pa.array(np.arange(options.items)), "category": pa.array(catalog.category)}),
                   out / "item_categories.parquet")
    summary = {"options": asdict(options), "events": int(counts.sum()), "seconds": round(time.time() - started, 2)}
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    log.info("wrote %d events for %d users to %s in %.1fs", summary["events"], options.users, out, summary["seconds"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dimerec-synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    defaults = SynthOptions()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    synthesize(args.out, SynthOptions(**{k: getattr(args, k) for k in asdict(defaults)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
