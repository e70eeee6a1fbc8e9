"""`flowrl annotate serve` as a real process on 127.0.0.1: bad requests get a 4xx and a message, a
SIGKILL loses no acknowledged label nor leaves half a line, concurrent annotators never share a pair."""
import json
import signal
import threading

import httpx
import pytest
from typer.testing import CliRunner

from annotate_helpers import moons_pair_folder, start_server, stop


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that do not kill it."""
    folder = moons_pair_folder(tmp_path_factory.mktemp("shared") / "pairs", 24)
    proc, url = start_server(folder)
    yield folder, proc, url
    stop(proc)


@pytest.fixture
def server(tmp_path):
    folder = moons_pair_folder(tmp_path / "pairs", 24)
    proc, url = start_server(folder)
    yield folder, proc, url
    stop(proc)


def test_malformed_requests_and_escaping_paths_get_4xx_with_a_message(shared):
    folder, _, url = shared
    c = httpx.Client(base_url=url, timeout=10)
    bad = [c.post("/api/label", content=b"{not json"),
           c.post("/api/label", json=[1, 2]),
           c.post("/api/label", json={"annotator": "a", "pair_id": "p000"}),
           c.post("/api/label", json={"annotator": "a", "pair_id": "nope", "preferred": "a", "shown_order": "ab"}),
           c.post("/api/label", json={"annotator": "a", "pair_id": "p000", "preferred": "left", "shown_order": "ab"}),
           c.post("/api/undo", json={"annotator": ""}),
           c.get("/api/next"),
           c.get("/api/nothing"),
           c.get("/images/..%2Flabels.jsonl"), c.get("/images/%2E%2E/%2E%2E/etc/passwd"),
           c.get("/images/p000_a.pt")]
    for r in bad:
        assert 400 <= r.status_code < 500 and r.json()["error"], (r.request.url, r.text)
    assert c.get("/images/p000_a.png").headers["content-type"] == "image/png"
    assert all(r["annotator"] != "a" for r in map(json.loads, (folder / "labels.jsonl").read_text().splitlines()))


def test_sigkill_between_labels_loses_nothing_acknowledged(server, tmp_path):
    folder, proc, url = server
    acked = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for choice in ("a", "b", "tie", "skip", "a"):
            p = c.get("/api/next", params={"annotator": "ann"}).json()["pair"]
            r = c.post("/api/label", json={"annotator": "ann", "pair_id": p["pair_id"], "preferred": choice,
                                           "shown_order": p["shown_order"]})
            acked.append((p["pair_id"], choice)) if r.status_code == 200 else None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = (folder / "labels.jsonl").read_text().split("\n")
    assert lines[-1] == ""                                     # every line complete
    assert [(r["pair_id"], r["preferred"]) for r in map(json.loads, lines[:-1])] == acked
    proc2, url2 = start_server(folder)                         # restart: continues where it stopped
    try:
        nxt = httpx.get(url2 + "/api/next", params={"annotator": "ann"}).json()
        assert nxt["pair"]["pair_id"] not in {a for a, _ in acked} and nxt["progress"]["done"] == 5
    finally:
        stop(proc2)


def test_concurrent_annotators_never_get_the_same_pair(shared):
    folder, _, url = shared
    errors = []

    def annotate(name):
        with httpx.Client(base_url=url, timeout=30) as c:
            while (p := c.get("/api/next", params={"annotator": name}).json()["pair"]) is not None:
                r = c.post("/api/label", json={"annotator": name, "pair_id": p["pair_id"], "preferred": "a",
                                               "shown_order": p["shown_order"]})
                if r.status_code != 200:
                    errors.append(r.text)
    threads = [threading.Thread(target=annotate, args=(f"ann{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = [json.loads(x) for x in (folder / "labels.jsonl").read_text().splitlines()]
    ids = [r["pair_id"] for r in rows]
    assert not errors and len(ids) == len(set(ids)) == 24
    assert len({r["annotator"] for r in rows}) > 1
    from flowrl.cli import app
    out = CliRunner().invoke(app, ["annotate", "stats", str(folder / "labels.jsonl")])
    assert out.exit_code == 0 and "labels 24: a 24, b 0, tie 0, skip 0" in out.output
    assert "no pair judged twice" in out.output
