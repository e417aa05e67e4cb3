"""tools/target_structure.py: what predicts a log's held-out targets, and two rankings that learn nothing."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from dimerec_dist.data.prepare import PrepareOptions, prepare
from dimerec_dist.data.schema import DataError
from tests.distributed.conftest import REPO

_spec = importlib.util.spec_from_file_location("target_structure", REPO / "tools" / "target_structure.py")
target_structure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(target_structure)

# Dense ids 1..6 (0 is padding). Popularity orders them 3, 1, 5, 2, 6, 4 (1 and 5 tie: the lower id first).
POPULARITY = np.array([0, 8, 5, 9, 1, 8, 3])
CATEGORY = np.array([-1, 0, 0, 1, 1, 1, 2])


def test_the_last_items_category_is_ranked_first_and_seen_items_never():
    histories = [np.array([2, 4]), np.array([3, 1])]  # last items: 4 (category 1), 1 (category 0)
    by_category = target_structure.heuristic_topk(histories, POPULARITY, 3, CATEGORY)
    # User 0: category 1 by popularity is 3, 5 (4 seen), then the rest: 1. User 1: category 0 is 2 (1 seen), then 5, 6.
    assert by_category.tolist() == [[3, 5, 1], [2, 5, 6]]
    by_popularity = target_structure.heuristic_topk(histories, POPULARITY, 3)
    assert by_popularity.tolist() == [[3, 1, 5], [5, 2, 6]]
    tiny = target_structure.heuristic_topk([np.array([1, 2, 3, 4, 5])], POPULARITY, 3)
    assert tiny.tolist() == [[6, 0, 0]], "fewer unseen items than k: padded, never a seen item"


def test_category_shares_count_last_most_frequent_and_any():
    histories = [np.array([1, 3, 4]), np.array([3, 4, 1]), np.array([6, 6, 2])]
    targets = np.array([5, 2, 4])  # categories 1, 0, 1
    shares = target_structure.category_shares(histories, targets, CATEGORY)
    assert shares == pytest.approx(
        {"in_last_item_category": 2 / 3, "in_most_frequent_category": 1 / 3, "in_any_history_category": 2 / 3}
    )


def test_on_a_synthetic_log_the_last_category_beats_popularity(tiny_dataset):
    result = target_structure.target_structure(tiny_dataset, synth_dir=tiny_dataset.parent / "raw")
    assert result["users"] == 400 and 0 < result["target_already_seen"] < 1
    assert result["in_last_item_category"] <= result["in_any_history_category"]
    # The generator's sessions follow one interest: the last item's category predicts the next.
    assert result["last_item_category"]["hr@10"] > 2 * result["popularity"]["hr@10"]
    assert "in_last_item_category" not in target_structure.target_structure(tiny_dataset), (
        "without the generator's categories only what needs none is reported"
    )


def test_a_user_split_is_refused_by_name(tiny_dataset, tmp_path):
    user_split = tmp_path / "user_split"
    prepare(PrepareOptions(format="events", input=tiny_dataset.parent / "raw" / "events", out=user_split, split="user"))
    with pytest.raises(DataError, match=f"{user_split}.*leave-one-out targets only"):
        target_structure.target_structure(user_split)


def test_the_command_writes_its_json_and_names_a_missing_dataset(tiny_dataset, tmp_path):
    run = [sys.executable, "tools/target_structure.py", "--data"]
    done = subprocess.run(
        [*run, str(tiny_dataset), "--out", str(tmp_path / "s.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads(done.stdout)
    missing = subprocess.run([*run, str(tmp_path / "nowhere")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "manifest.json does not exist" in missing.stderr
