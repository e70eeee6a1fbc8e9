"""Every named experiment of every config file builds, and bad overrides fail with the fix."""
import pytest

from flowrl.config import ConfigError, config_dirs, load_config, plan_batches, sibling

CONFIG_DIR = config_dirs()[0]
NAMED = [(f.name, name) for f in sorted(CONFIG_DIR.glob("*.py")) if f.name != "base.py"
         for name in sibling(str(f), f.stem).EXPERIMENTS]


@pytest.mark.parametrize("file,name", NAMED)
def test_every_named_config_builds_and_its_batches_divide(file, name):
    cfg = load_config(f"{file}:{name}")
    assert cfg.model.name and cfg.algorithm.name and dict(cfg.reward.weights)
    # each experiment must fit on the process counts it documents (1 unless it says otherwise)
    procs = cfg.get("num_processes_hint", 1) if "num_processes_hint" in cfg else 1
    plan_batches(cfg, procs)


def test_unknown_key_says_did_you_mean():
    with pytest.raises(ConfigError, match='unknown config key .lrr.*Did you mean "lr"'):
        load_config("grpo.py:moons", ["train.lrr=1e-4"])


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="train.lr=abc"):
        load_config("grpo.py:moons", ["train.lr=abc"])


def test_typed_override_applies():
    cfg = load_config("grpo.py:moons", ["train.lr=2e-3", "sample.same_latent=True"])
    assert cfg.train.lr == 2e-3 and cfg.sample.same_latent is True


@pytest.mark.parametrize("override,msg", [
    ("sample.group_size=100", "not divisible by sample.group_size"),
    ("train.batch_size=100", "train.batch_size \\(100\\) must divide"),
    ("train.gradient_accumulation_steps=3", "gradient_accumulation_steps \\(3\\) must divide"),
    ("eval.num_samples=1001", None),
])
def test_indivisible_batches_name_the_numbers(override, msg):
    cfg = load_config("grpo.py:moons", [override])
    if msg is None:
        plan_batches(cfg, 1)
        with pytest.raises(ConfigError, match="eval.num_samples"):
            plan_batches(cfg, 2)
    else:
        with pytest.raises(ConfigError, match=msg):
            plan_batches(cfg, 1)


def test_unknown_experiment_and_file():
    with pytest.raises(ConfigError, match="known"):
        load_config("grpo.py:nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config("nope.py:moons")


def test_bare_names_resolve_in_the_project_config_folder_first(tmp_path, monkeypatch):
    """A grpo.py in the current folder never shadows config/grpo.py; ./grpo.py loads it on purpose;
    a bare name that only exists here still loads from here."""
    from flowrl.config import resolve_config_path
    project = config_dirs()[0]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo.py").write_text("raise SystemExit('untrusted code ran')\n")
    (tmp_path / "mine.py").write_text("from flowrl.config import sibling\n")
    assert resolve_config_path("grpo.py:moons") == f"{project / 'grpo.py'}:moons"
    assert load_config("grpo.py:moons").num_epochs == 30          # the project's file, not this one
    assert resolve_config_path("./grpo.py:moons") == f"{tmp_path / 'grpo.py'}:moons"
    assert resolve_config_path(f"{tmp_path}/grpo.py:moons") == f"{tmp_path / 'grpo.py'}:moons"
    assert resolve_config_path("mine.py:x") == f"{tmp_path / 'mine.py'}:x"


def test_train_prints_the_config_file_it_loaded(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flowrl.cli import app
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grpo.py").write_text("X = 1\n")
    res = CliRunner().invoke(app, ["train", "--config", "grpo.py:moons", "--set", "num_epochs=0"])
    assert f"config {config_dirs()[0] / 'grpo.py'}:moons" in res.stdout
    assert res.exit_code == 2 and "num_epochs=0" in res.stderr


@pytest.mark.parametrize("spec,real_spec", [("awm.py:tiny_geneval_placebo", "awm.py:tiny_geneval_cosine"),
                                            ("grpo.py:tiny_geneval_placebo", "grpo.py:tiny_geneval")])
def test_placebo_configs_train_on_the_placebo_and_log_the_real_rewards(spec, real_spec):
    real = load_config(real_spec)
    cfg = load_config(spec)
    assert dict(cfg.reward.weights) == {"placebo": 1.0}
    assert cfg.reward.metrics == ("scene_geneval",) + tuple(real.reward.metrics)
    # the real rewards keep their options (e.g. scene_geneval's no_extra), the placebo gets its seed
    assert cfg.reward.options.to_dict() == {**real.reward.options.to_dict(), "placebo": {"seed": 0}}
    # everything but the reward is the real experiment's
    for key in ("algorithm", "train", "sample", "model", "eval"):
        assert cfg[key].to_dict() == real[key].to_dict()
