"""The label store: leases, capacity, undo, restart, relative paths, statistics (no server)."""
import json

import pytest

from annotate_helpers import moons_pair_folder
from flowrl.serve.label_store import LabelError, LabelStore, label_stats, read_jsonl


def test_label_stats_counts_ties_and_agreement_by_hand():
    rows = [{"pair_id": "1", "annotator": "x", "preferred": "a"}, {"pair_id": "1", "annotator": "y", "preferred": "a"},
            {"pair_id": "2", "annotator": "x", "preferred": "b"}, {"pair_id": "2", "annotator": "y", "preferred": "tie"},
            {"pair_id": "3", "annotator": "x", "preferred": "skip"}, {"pair_id": "3", "annotator": "y", "preferred": "a"}]
    s = label_stats(rows)
    assert (s["a"], s["b"], s["tie"], s["skip"]) == (3, 1, 1, 1)
    assert s["tie_rate"] == pytest.approx(1 / 5)              # ties / (a + b + tie)
    assert s["agreement"] == pytest.approx(1 / 2)             # pair 1 agrees, 2 not, 3 has a skip
    assert s["overlap_pairs"] == 2 and s["annotators"] == {"x": 3, "y": 3}


def test_leases_undo_and_restart(tmp_path):
    folder = moons_pair_folder(tmp_path / "pairs", 3)
    store = LabelStore(folder)
    p1 = store.next_pair("ann")
    assert store.next_pair("ann")["pair_id"] == p1["pair_id"]          # asking again: the same pair
    assert store.next_pair("bob")["pair_id"] != p1["pair_id"]          # leased: never both
    with pytest.raises(LabelError, match="leased to another") as e:
        store.label("carl", p1["pair_id"], "a", "ab")
    assert e.value.status == 409
    row = store.label("ann", p1["pair_id"], "b", p1["shown_order"])
    assert row["image_a"] == f"{p1['pair_id']}_a.png" and row["sample_b"] == f"{p1['pair_id']}_b.pt"
    with pytest.raises(LabelError, match="preferred must be"):
        store.label("ann", p1["pair_id"], "left", "ab")
    store.label("ann", store.next_pair("ann")["pair_id"], "tie", "ba")
    assert store.undo("ann")["preferred"] == "tie"
    assert [r["preferred"] for r in read_jsonl(folder / "labels.jsonl")] == ["b"]
    store.close()
    again = LabelStore(folder)                                           # restart: continues
    assert again.progress("ann") == {"done": 1, "left": 2, "total": 3, "labels": 1}
    assert again.next_pair("ann")["pair_id"] != p1["pair_id"]


def test_overlap_pairs_go_to_two_annotators_and_labels_elsewhere_stay_resolvable(tmp_path):
    folder = moons_pair_folder(tmp_path / "pairs", 4)
    store = LabelStore(folder, labels=tmp_path / "out" / "labels.jsonl", overlap=1.0)
    for who in ("x", "y"):
        while (p := store.next_pair(who)) is not None:
            store.label(who, p["pair_id"], "a", p["shown_order"])
    assert store.next_pair("z") is None and store.stats()["agreement"] == 1.0
    row = json.loads((tmp_path / "out" / "labels.jsonl").read_text().splitlines()[0])
    assert (tmp_path / "out" / row["image_a"]).resolve() == (folder / f"{row['pair_id']}_a.png").resolve()


def test_image_paths_cannot_leave_the_pair_folder(tmp_path):
    folder = moons_pair_folder(tmp_path / "pairs", 1)
    (tmp_path / "secret.png").write_bytes(b"x")
    store = LabelStore(folder)
    assert store.image_path("p000_a.png").is_file()
    for bad in ("../secret.png", "/etc/passwd", "p000_a.pt", "sub/../../secret.png"):
        with pytest.raises(LabelError) as e:
            store.image_path(bad)
        assert e.value.status in (403, 404)


def test_dpo_loader_skips_ties_and_reads_the_exact_samples(tmp_path):
    from flowrl.algorithms.preferences import load_preference_file
    folder = moons_pair_folder(tmp_path / "pairs", 3)
    store = LabelStore(folder)
    for choice in ("a", "tie", "skip"):
        p = store.next_pair("ann")
        store.label("ann", p["pair_id"], choice, p["shown_order"])
    pairs = load_preference_file(folder / "labels.jsonl")
    assert len(pairs) == 1 and pairs[0].winner.name == "p000_a.pt" and pairs[0].loser.name == "p000_b.pt"
