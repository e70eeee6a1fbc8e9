"""Cheap training-time diversity and the mode-collapse alarm."""
import pytest
import torch

from flowrl.metrics.monitor import DiversityAlarm, cheap_diversity, cheap_features


def _clusters(m, per=20, spread=1e-3, sep=50.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = sep * torch.randn(m, 2, generator=g)
    return centres.repeat_interleave(per, 0) + spread * torch.randn(m * per, 2, generator=g)


def test_identical_and_clustered_points():
    assert cheap_diversity(torch.ones(10, 2))["vendi"] == pytest.approx(1.0, abs=1e-9)
    for m in (1, 4):
        d = cheap_diversity(_clusters(m), bandwidth=1.0)
        assert d["vendi"] == pytest.approx(m, abs=1e-3) and d["bandwidth"] == 1.0
    one_d = cheap_diversity(torch.cat([torch.zeros(20), torch.full((20,), 100.0)]), bandwidth=1.0)
    assert one_d["num_samples"] == 40 and one_d["vendi"] == pytest.approx(2.0, abs=1e-9)  # (N,): 2 modes


def test_at_most_512_samples_and_images():
    assert cheap_diversity(torch.randn(2000, 2))["num_samples"] == 512
    imgs = torch.rand(600, 3, 64, 64)
    assert cheap_features(imgs).shape == (600, 3 * 8 * 8)
    d = cheap_diversity(imgs)
    assert d["num_samples"] == 512 and 1.0 <= d["vendi"] <= 512
    same = cheap_diversity(imgs[:1].repeat(20, 1, 1, 1))
    assert same["vendi"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cheap_features(torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 2"):
        cheap_diversity(torch.rand(1, 2))


def test_base_bandwidth_sees_a_uniform_shrink():
    """The median rule is scale-invariant; the base bandwidth is what makes a collapse visible."""
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    base = cheap_diversity(x)
    own = cheap_diversity(0.1 * x)
    fixed = cheap_diversity(0.1 * x, bandwidth=base["bandwidth"])
    assert own["vendi"] == pytest.approx(base["vendi"], rel=1e-6)
    assert fixed["vendi"] < 0.3 * base["vendi"]


def test_alarm_fires_on_collapse_with_rising_reward():
    alarm = DiversityAlarm(0.5)
    base = {"vendi": 10.0, "bandwidth": 0.7, "num_samples": 100}
    assert alarm.check(0, base, 0.5) is None
    assert alarm.bandwidth == 0.7 and alarm.base_diversity == 10.0
    assert alarm.check(10, 6.0, 0.9) is None          # diversity above half the base
    assert alarm.check(20, 4.0, 0.4) is None          # collapsed, but reward did not rise
    msg = alarm.check(30, {"vendi": 4.0}, 0.95)
    assert msg and "step 30" in msg and "4.00" in msg and "10.00" in msg


def test_alarm_off_and_bad_fraction():
    alarm = DiversityAlarm(0.0)
    alarm.check(0, 10.0, 0.0)
    assert alarm.check(1, 1.0, 1.0) is None
    with pytest.raises(ValueError, match="diversity_alarm_fraction"):
        DiversityAlarm(1.5)


def test_config_has_the_fields():
    from flowrl.config import load_config
    c = load_config("grpo.py:moons_fidelity")
    assert c.eval.diversity is True and c.eval.diversity_alarm_fraction == 0.5
    assert load_config("grpo.py:moons").eval.diversity_alarm_fraction == 0.35
    DiversityAlarm(c.eval.diversity_alarm_fraction)
