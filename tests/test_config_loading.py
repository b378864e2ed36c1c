import pytest

from src.config import ConfigError, StrictModel, deep_merge, load_config, parse_overrides


class Optim(StrictModel):
    lr: float = 1e-3
    name: str = "adamw"


class Root(StrictModel):
    seed: int = 0
    optim: Optim = Optim()
    views: list[str] = ["roi"]


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\noptim:\n  lr: 0.1\n")
    cfg = load_config(Root, path, ["optim.name=sgd", "views=[roi, ctx3]"])
    assert (cfg.seed, cfg.optim.lr, cfg.optim.name, cfg.views) == (3, 0.1, "sgd", ["roi", "ctx3"])


def test_unknown_key_names_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr'; valid keys here: lr, name"):
        load_config(Root, path)
    with pytest.raises(ConfigError, match=r"valid keys here: optim, seed, views"):
        load_config(Root, None, ["sede=1"])


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="'seed'"):
        load_config(Root, None, ["seed=abc"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["seed"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Root, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Root, bad)


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}}
    merged = deep_merge(base, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}} and base == {"a": {"b": 1, "c": 2}}
