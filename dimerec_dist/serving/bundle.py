"""The serving bundle: what dimerec-export writes and dimerec-serve reads.

    BUNDLE/
      bundle.json            format, model facts, the item-table parts with checksums
      items/part-NNNNN.npy   rows [first, last) of the item table (row 0 is padding), one per
                             exporting rank; float32, float16, or int8 with a per-row scale
      items/part-NNNNN.scale.npy   int8 only: float32 scale per row
      vocabulary/            raw ids: by_item.npy (raw id of item i), sorted.npy + sorted_items.npy
                             (for lookups by binary search), popularity.npy
      tower.pt2              the user tower (GEM + DAM + a fixed number of reverse steps),
                             a torch.export program
      config.yaml            the run's config
      index.faiss            optional approximate index

Every .npy is memory-mapped at start-up, so a 10^7-item bundle opens in well under a
second and pages in as it is scanned. Every file's checksum is verified when the bundle
opens (the files hashed in parallel, memory-mapped: about 1 s per GB per core), unless
`verify=False` (`dimerec-serve --no-verify`, which is logged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dimerec_dist.runtime.integrity import mismatches, seal_problem

FORMAT = "dimerec-bundle"
VERSION = 1
MANIFEST = "bundle.json"
SEAL_KEY = "manifest_sha256"  # bundle.json's digest of itself
DTYPES = ("float32", "float16", "int8")


class BundleError(ValueError):
    """A bundle that is missing, incomplete, of another version, or fails its checksums."""


@dataclass
class TablePart:
    """Rows [first, last) of the item table, memory-mapped."""

    first: int
    last: int
    rows: np.ndarray  # (last - first, d): float32, float16 or int8
    scale: np.ndarray | None  # (last - first,) float32, int8 only

    def dense(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of this part (part-local indices) as float32."""
        return self.take(slice(start, stop))

    def take(self, local: slice | np.ndarray) -> np.ndarray:
        """Rows at part-local indices (a slice or an index array) as float32."""
        block = self.rows[local]
        if self.scale is None:
            return np.asarray(block, dtype=np.float32)
        return block.astype(np.float32) * self.scale[local][:, None]


class Bundle:
    def __init__(self, root: Path | str, verify: bool = True):
        self.root = Path(root)
        manifest_file = self.root / MANIFEST
        if not manifest_file.is_file():
            raise BundleError(f"{self.root} is not a serving bundle (no {MANIFEST}); make one with dimerec-export")
        try:
            self.manifest = json.loads(manifest_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{manifest_file}: not valid JSON ({exc})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise BundleError(
                f"{manifest_file}: format {self.manifest.get('format')!r} version "
                f"{self.manifest.get('version')!r}, expected {FORMAT!r} version {VERSION}"
            )
        if verify:
            self.verify()
        m = self.manifest
        self.num_items, self.dim = m["num_items"], m["dim"]
        self.parts = [
            TablePart(
                p["first"],
                p["last"],
                self._load(p["file"]),
                self._load(p["scale_file"]) if p.get("scale_file") else None,
            )
            for p in m["parts"]
        ]
        self.parts.sort(key=lambda part: part.first)
        covered = [(p.first, p.last) for p in self.parts]
        if (
            not covered
            or covered[0][0] != 0
            or covered[-1][1] != self.num_items + 1
            or any(a[1] != b[0] for a, b in zip(covered, covered[1:]))
        ):
            raise BundleError(
                f"{manifest_file}: the table parts cover {covered}, not rows 0..{self.num_items} once each"
            )
        for part in self.parts:
            if part.rows.shape != (part.last - part.first, self.dim):
                raise BundleError(
                    f"{self.root}: a part of rows [{part.first}, {part.last}) has shape "
                    f"{part.rows.shape}, expected ({part.last - part.first}, {self.dim})"
                )
        vocabulary = m["vocabulary"]
        self.raw_by_item = self._load(vocabulary["by_item"])
        self.sorted_raw = self._load(vocabulary["sorted"])
        self.sorted_items = self._load(vocabulary["sorted_items"])
        self.popularity = self._load(vocabulary["popularity"])

    def _load(self, name: str) -> np.ndarray:
        path = self.root / name
        if not path.is_file():
            raise BundleError(f"{self.root}: {name} is missing")
        try:
            return np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise BundleError(f"{path}: not a readable .npy file ({exc})") from exc

    def verify(self, only: set[str] | None = None) -> None:
        """Every file's SHA-256 against the manifest, and the manifest's own digest (reads the
        whole bundle, several files at once); `only`: just these files (a shard's parts)."""
        seal = seal_problem(self.manifest, SEAL_KEY, self.root / MANIFEST)
        checksums = self.manifest.get("checksums") or {}
        if only is not None:
            checksums = {name: digest for name, digest in checksums.items() if name in only}
        problems = ([seal] if seal else []) + mismatches(self.root, checksums)
        if not self.manifest.get("checksums"):
            problems.append(f"{self.root / MANIFEST} lists no checksums")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"{problems[0]}{more}; export the bundle again, or serve with --no-verify at your risk")

    def part_files(self, indices: list[int]) -> set[str]:
        """The files holding the parts at `indices` (in first-row order), with their scales."""
        ordered = sorted(self.manifest["parts"], key=lambda p: p["first"])
        return {name for i in indices for name in (ordered[i]["file"], ordered[i].get("scale_file")) if name}

    @property
    def cosine(self) -> bool:
        return bool(self.manifest["cosine"])

    def path(self, name: str) -> Path:
        return self.root / name

    # ------------------------------------------------------------------ ids

    def item_ids(self, raw_ids: list) -> tuple[np.ndarray, list]:
        """Dense item ids of the raw ids that are in the vocabulary (in order), and the unknown raw ids."""
        encoded = [str(raw).encode() for raw in raw_ids]
        # A raw id wider than the vocabulary's widest would be truncated by the cast: never a match.
        fits = np.array([len(key) <= self.sorted_raw.dtype.itemsize for key in encoded], dtype=bool)
        keys = np.array(encoded, dtype=self.sorted_raw.dtype).reshape(-1)
        where = np.minimum(np.searchsorted(self.sorted_raw, keys), len(self.sorted_raw) - 1)
        known = fits & (self.sorted_raw[where] == keys)
        unknown = [raw for raw, ok in zip(raw_ids, known) if not ok]
        return self.sorted_items[where[known]].astype(np.int64), unknown

    def raw_ids(self, items: np.ndarray) -> list[str]:
        return [raw.decode() for raw in self.raw_by_item[np.asarray(items, dtype=np.int64)]]

    def rows(self, items: np.ndarray) -> np.ndarray:
        """float32 rows of the given item ids (any order, repeats allowed)."""
        items = np.asarray(items, dtype=np.int64)
        out = np.zeros((len(items), self.dim), np.float32)
        for part in self.parts:
            index = np.nonzero((items >= part.first) & (items < part.last))[0]
            if len(index):
                out[index] = part.take(items[index] - part.first)
        return out
