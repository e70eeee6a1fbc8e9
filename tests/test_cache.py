"""flowrl.cache: folders are built into a temporary sibling and renamed, never seen half-written."""
import pytest

from flowrl.cache import build_folder_atomically


def _current(d):
    return (d / "stamp").exists() and (d / "stamp").read_text() == "v2"


def _build(tmp):
    (tmp / "weights").write_text("new")
    (tmp / "stamp").write_text("v2")


def test_stale_folder_is_replaced_and_a_current_one_reused(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stamp").write_text("v1")
    assert build_folder_atomically(target, _build, _current) == target
    assert (target / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]      # no temp or old folders left
    calls = []
    build_folder_atomically(target, calls.append, _current)
    assert calls == []


def test_a_failed_build_leaves_the_old_folder_and_no_debris(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "stamp").write_text("v1")

    def broken(tmp):
        (tmp / "weights").write_text("half")
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError, match="out of memory"):
        build_folder_atomically(target, broken, _current)
    assert (target / "stamp").read_text() == "v1" and not (target / "weights").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
