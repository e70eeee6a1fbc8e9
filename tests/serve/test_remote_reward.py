"""The `remote` reward against real server processes: equal to the local reward bit for bit, and
every fault either recovered by a retry or reported as RemoteRewardError naming the URL and error."""
import time

import pytest
import torch

from flowrl.registry import REWARDS
from flowrl.rewards import build_reward
from flowrl.rewards.remote import RemoteRewardError

from servers import free_port

N = 10
PROMPTS, META = [f"p{i}" for i in range(N)], [{"i": i} for i in range(N)]


@pytest.fixture(scope="module")
def images():
    return torch.rand(N, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def remote(url, **options):
    return REWARDS.build("remote", torch.device("cpu"), url=url, **{"retries": 2, "backoff": 0.01, **options})


@pytest.mark.parametrize("options", [{}, {"encoding": "png"}, {"batch_size": 3, "concurrency": 2}])
def test_remote_scores_equal_local_scores_bit_for_bit(jpeg_server, images, options):
    local = REWARDS.build("jpeg_compressibility", torch.device("cpu"))(images, PROMPTS, META)
    total, parts = build_reward({"remote": 1.0}, {"remote": {"url": jpeg_server.url, **options}}, "cpu")(
        images, PROMPTS, META)
    assert torch.equal(total, local) and torch.equal(parts["remote"], local)
    assert jpeg_server.health()["rewards"] == {"jpeg_compressibility": 1.0}


@pytest.mark.parametrize("faults", [["500", "500"], ["malformed"], ["count"], ["nan"], ["slow:1.5"]])
def test_a_fault_shorter_than_the_retries_is_recovered(jpeg_server, images, faults):
    expected = REWARDS.build("jpeg_compressibility", torch.device("cpu"))(images, PROMPTS, META)
    jpeg_server.faults(*faults)
    assert torch.equal(remote(jpeg_server.url, timeout=1.0)(images, PROMPTS, META), expected)


@pytest.mark.parametrize("fault, message", [("500", "HTTP 500"), ("malformed", "not JSON"),
                                            ("count", "9 scores for 10 samples"), ("nan", "non-finite"),
                                            ("slow:1", "no answer within 0.3 s")])
def test_a_fault_that_outlasts_the_retries_stops_with_the_url_and_last_error(jpeg_server, images, fault, message):
    jpeg_server.faults(*[fault] * 3)
    with pytest.raises(RemoteRewardError) as e:
        remote(jpeg_server.url, timeout=0.3)(images, PROMPTS, META)
    assert jpeg_server.url in str(e.value) and message in str(e.value) and "3 attempts" in str(e.value)


def test_not_required_scores_the_fallback_and_says_so(jpeg_server, images, capsys):
    jpeg_server.faults("500", "500", "500")
    scores = remote(jpeg_server.url, required=False, fallback=-7.0)(images, PROMPTS, META)
    assert torch.equal(scores, torch.full((N,), -7.0))
    assert "required=False" in capsys.readouterr().err


def test_a_4xx_is_not_retried_and_unsendable_samples_are_named(jpeg_server, images):
    jpeg_server.faults("400")
    t0 = time.time()
    with pytest.raises(RemoteRewardError, match="refused the request: HTTP 400"):
        remote(jpeg_server.url, backoff=5.0)(images, PROMPTS, META)
    assert time.time() - t0 < 5.0                            # no retry
    with pytest.raises(RemoteRewardError, match="encoding=safetensors"):   # 2-D samples are no images
        remote(jpeg_server.url, encoding="png")(torch.rand(2, 2), ["", ""], [{}, {}])


def test_health_check_fails_at_once_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RemoteRewardError, match=f"no reward server answers at {url}.*serve-reward"):
        remote(url)


def test_flowgrpo_protocol_and_the_restricted_unpickler(jpeg_server, images):
    from flowrl.serve.reward_protocol import image_bytes
    scores = remote(jpeg_server.url, protocol="flowgrpo")(images, PROMPTS, META)
    expected = torch.tensor([len(b) / 1000 for b in image_bytes(images, "JPEG")])
    assert torch.equal(scores, expected)
    jpeg_server.faults("pickle_class", "pickle_class", "pickle_class")
    with pytest.raises(RemoteRewardError, match="refused to unpickle numpy"):
        remote(jpeg_server.url, protocol="flowgrpo")(images, PROMPTS, META)
