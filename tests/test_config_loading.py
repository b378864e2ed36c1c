import pytest

from src.config import ConfigError, StrictModel, config_sources, deep_merge, load_config, parse_overrides


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


def test_base_key_merges_the_base_first(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("seed: 1\noptim:\n  lr: 0.5\n  name: sgd\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nviews: [roi, ctx3]\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml   # relative to this file\noptim: {lr: 0.1}\n")
    cfg = load_config(Root, tmp_path / "sub" / "leaf.yaml", ["seed=4"])
    assert (cfg.seed, cfg.optim.lr, cfg.optim.name, cfg.views) == (4, 0.1, "sgd", ["roi", "ctx3"])
    assert config_sources(tmp_path / "sub" / "leaf.yaml") == [
        tmp_path / "sub" / "../root.yaml", tmp_path / "sub" / "mid.yaml", tmp_path / "sub" / "leaf.yaml"]


def test_base_key_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(Root, tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="not found: .*missing.yaml"):
        load_config(Root, tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must be a file name"):
        load_config(Root, tmp_path / "d.yaml")
