"""The pipeline config: one YAML file names the training config and everything around it.

    name: demo                          # run folder = output_root/name, submissions/<name>_<decoder>.csv
    train_config: cfg/wrn_dwce.yaml     # a training config (src.config.Config; optional) ...
    train_overrides:                    # ... and keys merged over it for every member
      train: {epochs: 12}
    data_root: inputs/synthetic/demo    # becomes data.root of every member
    seeds: [0, 1, 2]                    # one ensemble member per seed
    rounds: 2                           # self-training rounds after the initial ensemble
    warm_start: true                    # rounds >= 1 fine-tune the previous round's member of the same seed ...
    warm_start_overrides:               # ... with these training keys (e.g. fewer epochs)
      train: {epochs: 6}
    pseudo: {min_votes: 2}              # the pseudo-label gate (and coarse / frame-aware options)
    decoding: {decoders: [argmax, bayes], sigma: top2_sigma, diffusion_alpha: 0.3}
    ...

`python -m src.stages.pipeline --help` lists every key with its default and meaning.

Layout of a run (`RunLayout`): output_root/name/{pipeline.yaml, state.json, round_<r>/...}; round 0 is
the ensemble trained on the training annotations only; round r >= 1 holds pseudo_labels.csv (made from
round r-1's ensemble), stats.json, the plot and the members trained on train + those pseudo-labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, ValidationInfo, field_validator

from src.config import Config, ConfigError, StrictModel, load_config, load_yaml
from src.decoding import DECODERS, FRAME_DECODERS
from src.ensemble import DIFFUSION_ALPHA, SIGMA_CONVENTIONS

Decoder = Literal[DECODERS]
Sigma = Literal[SIGMA_CONVENTIONS]


class PrepareConfig(StrictModel):
    """How `prepare` makes the data ready: generate the benchmark if asked, fetch frames and cut ROIs."""

    synthetic_preset: Optional[Literal["tiny", "demo", "bench"]] = Field(
        None, description="generate this benchmark into data_root when it holds no complete one (None: real data)")
    synthetic_seed: int = Field(0, description="seed of the generated benchmark")
    download: bool = Field(True, description="run src.data.download for the train and test splits when not done yet")


GATES = ("agreement", "agreement_u", "expected_distance", "max_prob", "avgk_set_size")
COARSE_RANKS = ("genus", "family", "order")


class PseudoLabelConfig(StrictModel):
    """Which test ROIs become pseudo-labels: by default at least `min_votes` agreeing members and ensemble
    U >= threshold (gate agreement_u); `gate` picks another rule (src/gates.py)."""

    min_votes: int = Field(2, ge=1, description="members that must vote for the ensemble label (the team: 5 of 8)")
    u_threshold: float = Field(0.0, ge=0.0, le=1.0, description="minimum ensemble U (GMU over the members)")
    gate: Literal[GATES] = Field(
        "agreement_u", description="agreement: >= min_votes members agree; agreement_u: and U >= u_threshold; "
        "expected_distance: min_c sum_j p_j D[j,c] <= tau (Bayes label); max_prob: max p >= prob_threshold "
        "(argmax label); avgk_set_size: the members' average-K set head (model.avgk_head) gives a set of 1 to "
        "max_set_size concepts at the threshold that averages avgk_k concepts on validation (argmax label)")
    tau: float = Field(1.0, ge=0.0, description="expected_distance gate: largest accepted Bayes risk")
    prob_threshold: float = Field(0.5, ge=0.0, le=1.0, description="max_prob gate: smallest accepted max p")
    avgk_k: float = Field(2.0, ge=1.0, description="avgk_set_size gate: mean set size the threshold is fitted to")
    max_set_size: int = Field(1, ge=1, description="avgk_set_size gate: largest accepted set size")
    coarse: bool = Field(False, description="ROIs that fail the gate but where min_votes members agree on a "
                         "genus/family/order get a target_taxon row (trained on the set of its concepts)")
    coarse_min_rank: Literal[COARSE_RANKS] = Field(
        "order", description="coarsest rank of a coarse pseudo-label: genus, family or order")
    frame_aware: bool = Field(False, description="gate the frame-aware distributions (mean-field over each "
                              "frame's ROIs, weight of decoder frame_bayes fitted on validation) of every member")


class DecodingConfig(StrictModel):
    """How an ensemble's probabilities become labels (submit, the Kaggle package, src.predict)."""

    decoders: list[Decoder] = Field([d for d in DECODERS if d not in FRAME_DECODERS],
                                    description=f"decoders to write submissions for: {', '.join(DECODERS)}")
    sigma: Sigma = Field("top2_sigma", description="GMU spread: top2_sigma (the team's code) or sigma_at_top2_mu; "
                         "used for the vote decoder's ties and the pseudo-label U")
    diffusion_alpha: float = Field(DIFFUSION_ALPHA, ge=0.0, lt=1.0, description="a of the taxonomy diffusion decoder")
    frame_iterations: int = Field(1, ge=1, description="frame decoders: mean-field steps over each frame's ROIs")
    frame_smoothing: float = Field(1.0, gt=0.0, description="frame decoders: additive smoothing of the label "
                                   "co-occurrence counts of the training frames")


class KaggleConfig(StrictModel):
    """Where `submit --kaggle-submit` uploads."""

    competition: str = Field("fathomnet-2025", description="Kaggle competition slug")
    message: str = Field("fathomnet pipeline {name} ({decoder})", description="submission message ({name}, {decoder})")


class PipelineConfig(StrictModel):
    """Everything `python -m src.stages.pipeline` needs (see the module docstring)."""

    name: str = Field("demo", description="run folder output_root/name; submissions <name>_<decoder>.csv")
    train_config: Optional[str] = Field(None, description="training YAML (src.config.Config; None: its defaults)")
    train_overrides: dict[str, Any] = Field({}, description="nested training keys merged over it for every member, "
                                            "e.g. {train: {epochs: 12}}")
    data_root: str = Field(description="dataset folder (dataset_train.json, dataset_test.json); data.root of members")
    solution: Optional[str] = Field(None, description="CSV annotation_id,concept_name of the test ROIs, when known: "
                                    "scores pseudo-labels and submissions")
    seeds: list[int] = Field([0, 1, 2], description="one ensemble member per seed")
    split_seed: int = Field(0, description="one validation split for every member (a fair ensemble validation score)")
    rounds: int = Field(2, ge=0, description="self-training rounds after the initial ensemble")
    warm_start: bool = Field(False, description="round r members start from round r-1's weights of the same seed")
    warm_start_overrides: dict[str, Any] = Field(
        {}, description="with warm_start: nested training keys merged over train_overrides for the warm-started "
        "members (rounds >= 1), e.g. {train: {epochs: 10}, optim: {lr: 3.0e-4, warmup_epochs: 0}}")
    allow_missing_test: bool = Field(
        False, description="go on although test ROIs have no pixels (frames missing or undecodable): members predict "
        "them from black crops and submit writes them (default: prepare, training and submit stop, naming the "
        "download command)")
    prepare: PrepareConfig = PrepareConfig()
    pseudo: PseudoLabelConfig = PseudoLabelConfig()
    decoding: DecodingConfig = DecodingConfig()
    keep_checkpoints: bool = Field(
        False, description="keep each finished member's checkpoint.pt (weights + optimizer state, 3x model.pt: "
        "6.7 GB for a WRN-101-2 member); false: removed once its done.json is written (model.pt keeps the "
        "weights that predict, package and warm starts use)")
    parallel_members: int = Field(
        1, ge=1, description="members of a round trained at once, each in its own process (its output in the "
        "member's train.log). On a CPU, N single-threaded members side by side beat one multi-threaded member "
        "after another (set train.threads to cores / N); on one GPU they share its memory")
    output_root: str = Field("outputs/pipeline", description="parent folder of the run folder")
    submissions_dir: str = Field("submissions", description="where the submission CSVs go")
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


def new_run_name(cfg: PipelineConfig) -> str:
    """A name no run under output_root has yet: <name>_2, <name>_3, ..."""
    k = 2
    while (Path(cfg.output_root) / f"{cfg.name}_{k}").exists():
        k += 1
    return f"{cfg.name}_{k}"


def load_pipeline_config(path: str | Path, overrides: list[str] = ()) -> PipelineConfig:
    """Read a pipeline YAML and apply `dotted.key=value` overrides (ConfigError on any problem)."""
    return load_config(PipelineConfig, path, overrides)


def is_pipeline_config(path: str | Path) -> bool:
    """Whether a YAML file is a pipeline config rather than a training config (src.config.Config): it has,
    itself or through its `base:` files, a top-level key only a pipeline config has. ConfigError when the
    file (or a base) cannot be read."""
    return bool(set(load_yaml(path)) & (set(PipelineConfig.model_fields) - set(Config.model_fields)))


def main(argv: list[str] | None = None) -> int:
    """`python -m src.stages.pipeline_config --is-pipeline FILE`: exit 0 for a pipeline config, 1 for a training
    config, 2 when the file cannot be read (train_model.sh asks it which kind of config it was given)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m src.stages.pipeline_config",
                                     description="Tell a pipeline config from a training config.")
    parser.add_argument("--is-pipeline", metavar="FILE", required=True,
                        help="exit 0 when FILE is a pipeline config, 1 when it is a training config, 2 on an error")
    args = parser.parse_args(argv)
    try:
        return 0 if is_pipeline_config(args.is_pipeline) else 1
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
