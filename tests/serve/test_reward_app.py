"""`flowrl serve-reward` as a real process: a weighted sum with per-component scores, concurrent requests
merged into reward calls of at most --max-batch samples, the request-size limit, clear 4xx errors."""
import base64
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from flowrl.registry import REWARDS
from flowrl.serve.reward_app import parse_options, parse_weights
from flowrl.serve.reward_protocol import JSON, encode_request, image_bytes, parse_response

from servers import ServerProcess, free_port


@pytest.fixture(scope="module")
def server():
    port = free_port()
    cmd = [sys.executable, "-m", "flowrl", "serve-reward", "jpeg_compressibility=2", "jpeg_incompressibility=0.5",
           "--metric", "jpeg_compressibility", "--option", "jpeg_incompressibility.quality=50",
           "--port", str(port), "--max-batch", "4", "--max-request-mb", "0.05", "--threads", "1"]
    s = ServerProcess(port=port, cmd=cmd).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_server():
    """A server whose reward sleeps 0.5 s per call: the requests sent meanwhile queue up behind it."""
    port = free_port()
    cmd = [sys.executable, "-m", "flowrl", "serve-reward", "slow_mean", "--import", "tests/serve/slow_reward.py",
           "--port", str(port), "--max-batch", "4", "--threads", "1"]
    s = ServerProcess(port=port, cmd=cmd).start()
    yield s
    s.stop()


def local(name, x, **options):
    return REWARDS.build(name, torch.device("cpu"), **options)(x, [""] * len(x), [{}] * len(x))


def post(url, body, ctype):
    return httpx.post(f"{url}/compute", content=body, headers={"content-type": ctype}, timeout=30.0)


def test_weighted_sum_and_components(server):
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    r = post(server.url, *encode_request(x, ["a", "b", "c"], [{}, {}, {}]))
    total, parts = parse_response(r.content, 3)
    comp, incomp = local("jpeg_compressibility", x), local("jpeg_incompressibility", x, quality=50)
    assert torch.equal(parts["jpeg_compressibility"], comp) and torch.equal(parts["jpeg_incompressibility"], incomp)
    assert torch.equal(total, 2 * comp + 0.5 * incomp)
    assert server.health()["rewards"] == {"jpeg_compressibility": 2.0, "jpeg_incompressibility": 0.5}


def test_concurrent_requests_are_merged_up_to_max_batch_in_order(slow_server):
    xs = [torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    before = slow_server.health()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda x: post(slow_server.url, *encode_request(x, [""], [{}])), xs))
    after = slow_server.health()
    for x, r in zip(xs, answers):                                       # each request gets its own score
        assert torch.allclose(parse_response(r.content, 1)[0], x.mean(dim=(1, 2, 3)))
    assert after["samples_scored"] - before["samples_scored"] == 12
    # the first call sleeps 0.5 s while the other 11 queue: they merge into calls of at most 4
    assert 3 <= after["reward_calls"] - before["reward_calls"] <= 6


def test_bad_bodies_get_clear_4xx(server):
    png = base64.b64encode(image_bytes(torch.rand(1, 3, 8, 8))[0]).decode()
    cases = [(b"{not json", JSON, 400, "not JSON"),
             (json.dumps({"images": ["@@@"]}).encode(), JSON, 400, "images[0] is not a base64 PNG"),
             (json.dumps({"images": [png], "prompts": ["a", "b"]}).encode(), JSON, 400, "1 samples but 2 prompts"),
             (b"garbage", "application/x-safetensors", 400, "safetensors"),
             (b"x", "text/plain", 400, "content type"),
             (b"x" * 60_000, JSON, 413, "exceeds the server's limit")]
    for body, ctype, status, text in cases:
        r = post(server.url, body, ctype)
        assert r.status_code == status and text in r.json()["detail"], (text, r.text)


def test_argument_parsing():
    assert parse_weights(["a", "b=0.5,c=2"]) == {"a": 1.0, "b": 0.5, "c": 2.0}
    assert parse_options(["a.q=90", "a.name=x", "b.f=1e-3"]) == {"a": {"q": 90, "name": "x"}, "b": {"f": 1e-3}}
    with pytest.raises(ValueError, match="NAME=WEIGHT"):
        parse_weights(["a=x"])
    with pytest.raises(ValueError, match="REWARD.KEY=VALUE"):
        parse_options(["quality=90"])
