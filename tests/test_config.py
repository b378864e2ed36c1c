"""The training config tree: defaults, shipped configs, overrides, readable errors, --help."""
import subprocess
import sys
from pathlib import Path

import pytest

from src.config import Config, ConfigError, config_to_yaml, describe_config, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIGS = sorted(REPO.glob("cfg/demo_*.yaml")) + [REPO / "cfg" / "wrn_dwce.yaml"] + \
    sorted(REPO.glob("cfg/gpu_context_*.yaml"))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(Config, path)
    assert cfg.output.run_name == path.stem


def test_team_recipe_values():
    cfg = load_config(Config, REPO / "cfg" / "wrn_dwce.yaml")
    assert cfg.model.backbone.startswith("wide_resnet101_2") and cfg.model.pretrained
    assert (cfg.data.image_size, cfg.train.batch_size, cfg.train.epochs, cfg.model.num_heads) == (112, 64, 30, 100)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-4, 1e-4)
    assert (cfg.optim.warmup_epochs, cfg.optim.min_lr) == (10, 1e-5)
    assert (cfg.loss.name, cfg.loss.dwce_weights) == ("dwce", "team")
    assert cfg.data.root == "inputs/fathomnet2025"
    assert (cfg.augment.downscale, cfg.augment.downscale_p) == ((0.25, 1.0), 0.5)  # beyond the team: measured to help


def test_baseline_configs_differ_only_in_the_loss():
    losses = {p.stem: load_config(Config, p).loss for p in TRAIN_CONFIGS if p.stem.startswith("demo_")
              and p.stem != "demo_tiny"}
    assert {(l.name, l.dwce_weights if l.name == "dwce" else None) for l in losses.values()} == {
        ("ce", None), ("dwce", "team"), ("dwce", "paper"), ("ce_expdist", None), ("soft_labels", None)}
    base = load_config(Config, REPO / "cfg" / "demo_wrn_dwce.yaml").model_dump()
    for name in losses:
        other = load_config(Config, REPO / "cfg" / f"{name}.yaml").model_dump()
        assert {k for k in base if base[k] != other[k]} <= {"loss", "output"}, name
        if name != "demo_wrn_dwce":  # a variant states only what differs from its base
            lines = [line for line in (REPO / "cfg" / f"{name}.yaml").read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
            assert lines[0] == "base: demo_wrn_dwce.yaml" and len(lines) <= 4, name


def test_overrides_are_typed():
    cfg = load_config(Config, None, ["optim.lr=3e-4", "model.aux_ranks=[phylum,class]", "augment.downscale=[0.2,1]",
                                     "seed=7", "optim.grad_clip=null"])
    assert cfg.optim.lr == 3e-4 and cfg.seed == 7 and cfg.optim.grad_clip is None
    assert cfg.model.aux_ranks == ["phylum", "class"] and cfg.augment.downscale == (0.2, 1.0)


def test_string_fields_take_scalars():
    cfg = load_config(Config, None, ["output.run_name=2024", "data.root=007", "data.cache_dir=2024-01-01",
                                     "data.pseudo_labels=null", "output.dir=1.50"])
    assert (cfg.output.run_name, cfg.data.root, cfg.data.cache_dir, cfg.output.dir) == ("2024", "007", "2024-01-01",
                                                                                        "1.50")
    assert cfg.data.pseudo_labels is None
    assert validate_config(Config, {"output": {"run_name": 2024}}).output.run_name == "2024"  # from a YAML file
    from src.stages.pipeline_config import PipelineConfig
    assert load_config(PipelineConfig, None, ["name=2024", "data_root=x"]).name == "2024"
    with pytest.raises(ConfigError, match="'seed'"):
        load_config(Config, None, ["seed=abc"])  # other fields stay typed


@pytest.mark.parametrize("override,expected", [
    ("optim.lrate=1", "unknown key 'optim.lrate'; valid keys here: grad_clip, lr, min_lr"),
    ("modle.backbone=x", "unknown key 'modle'; valid keys here: augment, data, loss, model"),
    ("loss.name=focal", "'loss.name'"),
    ("model.aux_ranks=[phylm]", "valid: kingdom, phylum"),
    ("train.epochs=0", "'train.epochs'"),
])
def test_errors_name_the_valid_keys(override, expected):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(Config, None, [override])
    assert expected in str(err.value)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(Config, REPO / "cfg" / "demo_wrn_dwce.yaml", ["seed=3"])
    (tmp_path / "c.yaml").write_text(config_to_yaml(cfg))
    assert load_config(Config, tmp_path / "c.yaml") == cfg


def test_help_documents_every_section():
    text = describe_config(Config)
    for key in ("seed", "data.root", "data.pseudo_labels", "model.num_heads", "loss.dwce_weights", "optim.min_lr",
                "train.resume", "augment.downscale", "output.run_name"):
        assert key in text
    out = subprocess.run([sys.executable, "main.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "train.max_epochs_this_run" in out.stdout and "torchrun" in out.stdout


def test_pipeline_help_documents_every_key():
    out = subprocess.run([sys.executable, "-m", "src.stages.pipeline", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for key in ("data_root (required)", "seeds = [0, 1, 2]", "pseudo.min_votes", "decoding.decoders",
                "decoding.sigma", "decoding.diffusion_alpha", "kaggle.competition", "pseudo.gate", "pseudo.tau",
                "pseudo.prob_threshold", "pseudo.avgk_k", "pseudo.max_set_size", "pseudo.coarse",
                "pseudo.coarse_min_rank", "pseudo.frame_aware", "decoding.frame_iterations",
                "decoding.frame_smoothing", "frame_bayes"):
        assert key in out.stdout, key


def test_pipeline_decoders_come_from_one_tuple():
    from src.decoding import DECODERS, FRAME_DECODERS
    from src.stages.pipeline_config import DecodingConfig, PipelineConfig

    assert tuple(DecodingConfig().decoders) + FRAME_DECODERS == DECODERS  # frame decoders: opt in
    with pytest.raises(ConfigError, match="decoding.decoders"):
        load_config(PipelineConfig, None, ["data_root=x", "decoding.decoders=[argmax,median]"])
    with pytest.raises(ConfigError, match="unknown key 'pseudo.sigma'; valid keys here: avgk_k, coarse"):
        load_config(PipelineConfig, None, ["data_root=x", "pseudo.sigma=top2_sigma"])
    cfg = load_config(PipelineConfig, None, ["data_root=x", "pseudo.gate=expected_distance", "pseudo.coarse=true",
                                             "decoding.decoders=[frame_bayes]"])
    assert cfg.pseudo.gate == "expected_distance" and cfg.pseudo.coarse and cfg.pseudo.coarse_min_rank == "order"
    for bad in ("pseudo.gate=median", "pseudo.coarse_min_rank=class"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(PipelineConfig, None, ["data_root=x", bad])


def test_test_time_views_are_validated():
    from src.data.transforms import parse_tta_view

    assert load_config(Config, None, []).train.tta_views == ["identity"]
    cfg = load_config(Config, None, ["train.tta_views=[identity,hflip,down75,hflip_down50]"])
    assert [parse_tta_view(v) for v in cfg.train.tta_views] == [(False, None), (True, None), (False, 0.75), (True, 0.5)]
    for bad, message in [("[identity,vflip]", "unknown test-time view 'vflip'"), ("[down5]", "down<NN>"),
                         ("[hflip,hflip]", "repeats"), ("[]", "train.tta_views")]:
        with pytest.raises(ConfigError, match=message):
            load_config(Config, None, [f"train.tta_views={bad}"])
