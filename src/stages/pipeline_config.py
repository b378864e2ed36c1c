"""The pipeline config: one YAML file names the training config and everything around it.

    name: demo                          # run folder = output_root/name, submissions/<name>_<decoder>.csv
    train_config: cfg/wrn_dwce.yaml     # a training config (src.config.Config; optional) ...
    train_overrides:                    # ... and keys merged over it for every member
      train: {epochs: 12}
    data_root: inputs/synthetic/demo    # becomes data.root of every member
    seeds: [0, 1, 2]                    # one ensemble member per seed
    rounds: 2                           # self-training rounds after the initial ensemble
    ...

Layout of a run (`RunLayout`): output_root/name/{pipeline.yaml, state.json, round_<r>/...}; round 0 is
the ensemble trained on the training annotations only; round r >= 1 holds pseudo_labels.csv (made from
round r-1's ensemble), stats.json, the plot and the members trained on train + those pseudo-labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator

from src.config import StrictModel, load_config

DECODERS = ("argmax", "vote", "bayes", "bayes_cal", "diffusion")
Decoder = Literal["argmax", "vote", "bayes", "bayes_cal", "diffusion"]


class PrepareConfig(StrictModel):
    """How `prepare` makes the data ready: generate the benchmark if asked, fetch ROIs."""

    synthetic_preset: Optional[Literal["tiny", "demo", "bench"]] = None  # generate into data_root when missing
    synthetic_seed: int = 0
    download: bool = True  # run src.data.download for the train and test splits when not done yet


class PseudoLabelConfig(StrictModel):
    """Which test ROIs become pseudo-labels: at least `min_votes` agreeing members and ensemble U >= threshold."""

    min_votes: int = Field(2, ge=1)
    u_threshold: float = Field(0.0, ge=0.0, le=1.0)
    sigma: Literal["top2_sigma", "sigma_at_top2_mu"] = "top2_sigma"


class KaggleConfig(StrictModel):
    competition: str = "fathomnet-2025"
    message: str = "fathomnet pipeline {name} ({decoder})"


class PipelineConfig(StrictModel):
    """Everything `python -m src.stages.pipeline` needs (see the module docstring)."""

    name: str = "demo"
    train_config: Optional[str] = None  # training YAML (src.config.Config); None: the Config defaults
    train_overrides: dict[str, Any] = {}  # nested keys merged over it for every member, e.g. {train: {epochs: 12}}
    data_root: str
    solution: Optional[str] = None  # annotation_id,concept_name of the test ROIs, when known: scores everything
    seeds: list[int] = [0, 1, 2]
    split_seed: int = 0  # one validation split for every member (so the ensemble's validation score is fair)
    rounds: int = Field(2, ge=0)
    warm_start: bool = False  # round r members start from round r-1's checkpoint of the same seed
    prepare: PrepareConfig = PrepareConfig()
    pseudo: PseudoLabelConfig = PseudoLabelConfig()
    decoders: list[Decoder] = ["argmax", "vote", "bayes", "bayes_cal", "diffusion"]
    diffusion_alpha: float = Field(0.3, ge=0.0, lt=1.0)
    output_root: str = "outputs/pipeline"
    submissions_dir: str = "submissions"
    kaggle: KaggleConfig = KaggleConfig()

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return seeds

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError("name must be a plain folder name")
        return name

    @field_validator("pseudo")
    @classmethod
    def _votes_possible(cls, pseudo: PseudoLabelConfig, info: ValidationInfo) -> PseudoLabelConfig:
        seeds = info.data.get("seeds") or []
        if seeds and pseudo.min_votes > len(seeds):
            raise ValueError(f"min_votes={pseudo.min_votes} exceeds the {len(seeds)} ensemble members")
        return pseudo

    @property
    def layout(self) -> "RunLayout":
        return RunLayout(Path(self.output_root) / self.name, Path(self.submissions_dir), self.name)


@dataclass(frozen=True)
class RunLayout:
    """Where every artefact of one pipeline run lives."""

    root: Path
    submissions: Path
    name: str

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    def round_dir(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def members_dir(self, r: int) -> Path:
        return self.round_dir(r) / "members"

    def member_dir(self, r: int, seed: int) -> Path:
        return self.members_dir(r) / f"seed_{seed}"

    def pseudo_labels(self, r: int) -> Path:
        return self.round_dir(r) / "pseudo_labels.csv"

    def submission(self, decoder: str) -> Path:
        return self.submissions / f"{self.name}_{decoder}.csv"

    @property
    def submit_dir(self) -> Path:
        return self.root / "submit"


def load_pipeline_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML and apply `dotted.key=value` overrides (ConfigError on any problem)."""
    return load_config(PipelineConfig, path, overrides)
