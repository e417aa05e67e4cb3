"""The three losses on the tiny planted data set, with GRW (both scales) and without it.

    python tools/planted_losses.py

Prints start -> end (means of the first and last 20 of 200 steps) of L_gem, L_recon and
L_ssm: the table in docs/MODEL.md, from the same helpers as the model test.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers live in tests/

from tests.model.planted import train_planted  # noqa: E402
from tests.model.test_dimerec import PLANTED, loss_drop, small_config  # noqa: E402

VARIANTS = {
    "GRW, angle (default)": {},
    "GRW, literal": {"grw_noise_scale": "literal"},
    "Euclidean (w/o GRW)": {"noise_space": "euclidean"},
}


def main() -> int:
    print("| noising | L_gem | L_recon | L_ssm |\n|---|---|---|---|")
    for name, extra in VARIANTS.items():
        drops = loss_drop(train_planted(small_config(**PLANTED, **extra), steps=200))
        print(f"| {name} | " + " | ".join(f"{a:.2f} -> {b:.2f}" for a, b in drops.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
