"""Typed configuration: YAML files plus `dotted.key=value` command-line overrides.

Every config section is a `StrictModel` (pydantic, unknown keys forbidden). A config file may start
from another one (`base: demo_wrn_dwce.yaml`, relative to its folder) and hold only what differs.
`load_config` merges YAML and overrides, validates once, and turns pydantic's errors into one readable
`ConfigError` that names the valid keys where a key is unknown or misspelt.
"""
from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

T = TypeVar("T", bound="StrictModel")
BASE_KEY = "base"  # a config file's key naming the file it extends


class ConfigError(ValueError):
    """A config file or override is invalid; the message says what and where."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated; a string field
    takes a number too (`run_name: 2024` in a YAML file)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              coerce_numbers_to_str=True)


def _is_string_field(model_cls: type[BaseModel] | None, parts: list[str]) -> bool:
    """Whether the dotted key `parts` names a `str` or `Optional[str]` field of model_cls."""
    cls, annotation = model_cls, None
    for part in parts:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return False
        annotation = cls.model_fields[part].annotation
        cls = annotation
    if get_origin(annotation) in (Union, types.UnionType):
        return set(get_args(annotation)) == {str, type(None)}
    return annotation is str


def parse_overrides(overrides: list[str], model_cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """['a.b=3', 'c=[1,2]'] -> {'a': {'b': 3}, 'c': [1, 2]}; values are parsed as YAML scalars/lists.

    With `model_cls`, a key naming a string field keeps its text when YAML would read a number, a bool
    or a date: `output.run_name=007` is '007', not 7 (null still means None)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier override of {part!r}")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if value is not None and not isinstance(value, (str, list, dict)) and _is_string_field(model_cls, parts):
            value = raw.strip()
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `update` merged into `base` recursively (update wins)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _valid_keys(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model section that `loc` (minus its last element) points into."""
    cls = model_cls
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        cls = annotation
    return sorted(cls.model_fields)


def validate_config(model_cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Validate a plain dict into `model_cls`, raising ConfigError with readable messages."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "<root>"
            if e["type"] == "extra_forbidden":
                valid = _valid_keys(model_cls, e["loc"])
                lines.append(f"unknown key '{where}'; valid keys here: {', '.join(valid)}")
            else:
                lines.append(f"'{where}': {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{source}: " + "; ".join(lines)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as err:
        where = " ".join(line.strip() for line in str(err).splitlines())  # one line, with the position
        raise ConfigError(f"{path}: not valid YAML: {where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def config_sources(path: str | Path) -> list[Path]:
    """The files a config file is made of: its `base:` chain, the deepest base first, the file last."""
    chain = [Path(path)]
    while (base := _read_yaml(chain[0]).get(BASE_KEY)) is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{chain[0]}: '{BASE_KEY}' must be a file name, got {base!r}")
        base_path = chain[0].parent / base
        if any(base_path.resolve() == p.resolve() for p in chain):
            raise ConfigError(f"{chain[0]}: '{BASE_KEY}: {base}' makes a cycle")
        chain.insert(0, base_path)
    return chain


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file. A top-level `base: OTHER.yaml` (relative to the file's folder) is read
    first, recursively, and the file's keys are merged over it, so a variant holds only what differs."""
    tree: dict[str, Any] = {}
    for source in config_sources(path):
        data = _read_yaml(source)
        data.pop(BASE_KEY, None)
        tree = deep_merge(tree, data)
    return tree


def load_config(model_cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read YAML at `path` (or start from defaults when None), apply overrides, validate."""
    data = load_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(list(overrides), model_cls))
    return validate_config(model_cls, data, source=str(path or "defaults"))


def config_to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML (saved next to every artefact it produced)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# ---------------------------------------------------------------------------------------------------
# The training config tree (`python main.py CONFIG.yaml [dotted.key=value ...]`).
# Defaults are the small CPU demo; cfg/wrn_dwce.yaml holds the team's recipe on the real data.


class DataConfig(StrictModel):
    """Where the crops come from and how the validation split is made."""

    root: str = Field("inputs/synthetic/demo", description="dataset folder (dataset_train.json, train/, test/)")
    image_size: int = Field(32, ge=8, description="network input size in pixels")
    cache_size: Optional[int] = Field(None, ge=8, description="size of the cached crops (default image_size)")
    views: list[str] = Field(["roi"], min_length=1, description="crop views: roi, ctx3, ctx5, frame")
    view_sizes: dict[str, int] = Field(
        {}, description="input size in pixels of some views, e.g. {ctx3: 64, frame: 64} (the others: image_size); "
        "with cache_size set, such a view is cached at its size x cache_size / image_size")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="frame-grouped validation share (0: none)")
    split_seed: Optional[int] = Field(None, description="seed of the validation split (None: seed); "
                                      "ensemble members share one so their validation sets match")
    shifted_val: bool = Field(
        False, description="also validate on crops shrunk to follow the test box sizes (src.data.splits)")
    pseudo_labels: Optional[str] = Field(None, description="CSV annotation_id,concept_name of test ROIs to train on")
    solution: Optional[str] = Field(None, description="CSV annotation_id,concept_name to score test predictions")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    cache_dir: Optional[str] = Field(None, description="folder of the decoded crop caches (None: data.root/cache); "
                                     "lets a read-only data.root be trained on")
    max_missing_train_share: float = Field(
        0.02, ge=0, le=1, description="largest share of labelled training ROIs without pixels (frame missing or "
        "undecodable) that training drops with a warning; above it training stops")
    allow_missing_test: bool = Field(
        False, description="predict test ROIs without pixels from black crops (default: stop, naming the "
        "download command that fetches their frames)")

    @field_validator("views")
    @classmethod
    def _known_crop_views(cls, views: list[str]) -> list[str]:
        from src.data.crops import parse_view
        for view in views:
            parse_view(view)
        return views

    @field_validator("view_sizes")
    @classmethod
    def _sizes_of_known_views(cls, sizes: dict[str, int], info) -> dict[str, int]:
        views = info.data.get("views")
        if views is None:  # views itself is invalid: that error is reported
            return sizes
        unknown = [v for v in sizes if v not in views]
        if unknown:
            raise ValueError(f"view(s) {unknown} not in data.views; valid: {', '.join(views)}")
        small = {v: s for v, s in sizes.items() if s < 8}
        if small:
            raise ValueError(f"view sizes must be at least 8 pixels, got {small}")
        return sizes

    def input_sizes(self) -> tuple[int, ...]:
        """The network input size of each view, in data.views order."""
        return tuple(self.view_sizes.get(view, self.image_size) for view in self.views)

    def crop_sizes(self) -> tuple[int, ...]:
        """The cached crop size of each view: cache_size scales every view's input size by one ratio."""
        if self.cache_size is None:
            return self.input_sizes()
        return tuple(round(size * self.cache_size / self.image_size) for size in self.input_sizes())


class ModelConfig(StrictModel):
    """Backbone, view fusion and heads."""

    backbone: str = Field("wrn10_2", description="timm model name (wide_resnet101_2, wrn16_4, wrn<d>_<k>, ...)")
    pretrained: bool = Field(False, description="download timm's pretrained weights (needs internet)")
    pretrained_path: Optional[str] = Field(None, description="local weights: a checkpoint.pt or a state dict")
    backbone_kwargs: dict[str, Union[bool, int, float, str]] = Field(
        {}, description="further keyword arguments of the timm backbone, e.g. {drop_path_rate: 0.1}, or a smaller "
        "ViT: {depth: 4, embed_dim: 64, num_heads: 2}. A ViT (any model timm builds for one input size) is "
        "built for data.image_size")
    grad_checkpointing: bool = Field(
        False, description="recompute the backbone blocks' activations in the backward instead of storing them "
        "(timm's set_grad_checkpointing): far less activation memory for one more forward of the trainable blocks")
    frozen_blocks: int = Field(
        0, ge=0, description="freeze the patch embedding, class and position tokens and the first N transformer "
        "blocks (.blocks of a timm ViT) of each backbone: no gradient, no optimizer state; 0: train everything")
    num_heads: int = Field(1, ge=1, description="H classifier heads, trained with the mean loss over heads")
    head_hidden: Optional[int] = Field(None, ge=0, description="head hidden width (None: feature width; 0: linear)")
    shared_backbone: bool = Field(True, description="one backbone for all views (else one per view)")
    fusion: Literal["concat", "mean", "attention"] = Field("concat", description="how view features are fused")
    aux_ranks: list[str] = Field([], description="auxiliary heads per rank, e.g. [phylum, class, order]")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the heads (timm drop_rate)")
    channels_last: bool = Field(True, description="channels_last memory format (faster convs on GPU)")
    avgk_head: bool = Field(False, description="add the average-K sigmoid set head (output 'avgk'; loss.avgk_*)")
    avgk_detach: bool = Field(True, description="the set head reads detached features, so its BCE does not move "
                              "the backbone (false: it does; under DW-CE, whose loss is ~100x smaller, it then "
                              "drives the features and costs accuracy)")

    @field_validator("backbone_kwargs")
    @classmethod
    def _free_kwargs(cls, kwargs: dict) -> dict:
        taken = {"pretrained": "model.pretrained", "num_classes": "the heads", "drop_rate": "model.drop_rate",
                 "img_size": "data.image_size"}
        bad = {key: taken[key] for key in kwargs if key in taken}
        if bad:
            raise ValueError("keys set elsewhere: " + ", ".join(f"{k} (by {v})" for k, v in bad.items()))
        return kwargs

    @field_validator("aux_ranks")
    @classmethod
    def _known_ranks(cls, ranks: list[str]) -> list[str]:
        from src.taxonomy import RANKS
        bad = [r for r in ranks if r not in RANKS]
        if bad:
            raise ValueError(f"unknown rank(s) {bad}; valid: {', '.join(RANKS)}")
        return ranks


class LossConfig(StrictModel):
    """Training loss (see src/losses.py)."""

    name: Literal["ce", "dwce", "ce_expdist", "soft_labels", "hxe"] = Field("dwce", description="loss function")
    dwce_weights: Literal["team", "paper"] = Field("team", description="team: (D+I)/rowsum; paper: (D+1)/rowsum")
    expdist_lambda: float = Field(0.1, ge=0, description="weight of the expected distance (ce_expdist)")
    soft_beta: float = Field(1.0, gt=0, description="soft labels softmax(-beta * D[i]) (soft_labels)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing (ce)")
    aux_weight: float = Field(0.1, ge=0, description="weight of each auxiliary rank head's CE")
    hxe_alpha: float = Field(0.1, ge=0, description="HXE: lambda(node) = exp(-alpha * h(node)); 0 is plain CE (hxe)")
    hxe_weighting: Literal["height", "depth"] = Field(
        "height", description="HXE h: height above the leaves (largest weight at the leaves) or depth below the "
        "root (largest weight near the root, as Bertinetto et al.'s code) (hxe)")
    fierce_lambda: float = Field(0.0, ge=0, description="FIERCE: loss - lambda * H(batch-mean anchor softmax); 0: off")
    fierce_tau: float = Field(0.1, gt=0, description="FIERCE softmax temperature of the feature-anchor cosines")
    fierce_anchors: Optional[int] = Field(None, ge=2, description="FIERCE number of fixed random anchors "
                                          "(None: train.batch_size)")
    avgk_k: float = Field(2.0, ge=1, description="average-K set head: mean set size K it is trained for")
    avgk_alpha: float = Field(0.5, ge=0, description="average-K: BCE weight of the (K-1)|B| pseudo-positives")
    avgk_weight: float = Field(1.0, ge=0, description="average-K: weight of the set head's BCE in the loss")


class OptimConfig(StrictModel):
    """Optimiser and learning-rate schedule (warm-up + cosine, stepped per batch)."""

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (nesterov)")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length in epochs")
    min_lr: float = Field(1e-5, ge=0, description="cosine floor")
    grad_clip: Optional[float] = Field(None, gt=0, description="clip the gradient norm to this (None: off)")


class TrainConfig(StrictModel):
    """Loop, precision, devices, resumption."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="per process (per GPU under torchrun)")
    eval_batch_size: Optional[int] = Field(None, ge=1, description="default 2 x batch_size")
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="auto: bf16 on CUDA, off on CPU (float32); bf16 and fp16 need CUDA (an error on the CPU)")
    compile: bool = Field(False, description="torch.compile the training forward/backward (CUDA or CPU; on 2 shared "
                          "CPU cores no reliable gain, and the first compile takes minutes: bench/results_cpu.md)")
    resume: bool = Field(False, description="continue the run in output.dir/output.run_name")
    max_epochs_this_run: Optional[int] = Field(
        None, ge=1, description="stop after this many epochs in this process (time-limited jobs); resume later")
    max_steps: Optional[int] = Field(
        None, ge=1, description="stop the run after this many optimizer steps in total (counted across resumes; "
        "the epoch where it is reached ends there), writing model.pt and checkpoint.pt as at an epoch end, "
        "without the final predictions; resume later (train.resume=true) with a larger value or null. For dry "
        "runs and time-limited jobs; null: no limit")
    full_checkpoint_every: int = Field(
        1, ge=1, description="write the resumable checkpoint.pt (optimizer, scheduler, RNG) every N epochs and at "
        "the end; the weights-only model.pt is written every epoch")
    validate_every: int = Field(
        1, ge=1, description="validate (and redraw curves.png) after every N-th epoch and after the last epoch "
        "of the run or of this process; the other epochs' metrics.csv rows hold the training columns only. "
        "Nothing downstream reads per-epoch validation: the run keeps its last epoch's weights")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None: torch's default)")
    progress: bool = Field(True, description="tqdm progress bars")
    tta_views: list[str] = Field(
        ["identity"], min_length=1, description="test-time views of the final val/test predictions: identity, "
        "hflip, down<NN> (shrunk to NN% and back), hflip_down<NN>; probs = their mean, view_probs per view")

    @field_validator("tta_views")
    @classmethod
    def _known_views(cls, views: list[str]) -> list[str]:
        from src.data.transforms import parse_tta_view
        for view in views:
            parse_tta_view(view)
        if len(set(views)) != len(views):
            raise ValueError(f"tta_views repeats a view: {views}")
        return views


class AugmentConfig(StrictModel):
    """Train-time augmentation (albumentations per sample, or the same ops batched on the training device)."""

    rrc_scale: tuple[float, float] = Field((0.1, 1.0), description="RandomResizedCrop area range")
    hflip: bool = True
    color_jitter: float = Field(0.4, ge=0)
    pca_lighting: float = Field(0.1, ge=0, description="AlexNet PCA lighting noise std")
    downscale: Optional[tuple[float, float]] = Field(
        None, description="random down-scaling factor range [min, max] (shrink and back), None: off")
    downscale_p: float = Field(0.5, ge=0, le=1, description="probability of the down-scaling")
    batched: bool = Field(
        False, description="false: albumentations per sample in the DataLoader workers (src/data/transforms.py); "
        "true: the same ops batched on the training device (train.device: GPU or CPU) after the uint8 batch "
        "is moved there (src/data/gpu_augment.py)")


class OutputConfig(StrictModel):
    """Where the run folder goes: output.dir/output.run_name."""

    dir: str = "outputs/runs"
    run_name: str = "demo"
    wait_for_lock: bool = Field(False, description="when another process trains in the run folder: wait for it "
                                "(default: stop at once, naming it)")
    decode: Literal["argmax", "bayes"] = Field(
        "argmax", description="label rule of predictions.csv: argmax p or argmin_k sum_j D[k,j] p_j")


class Config(StrictModel):
    """One training run. Sections: seed, data, model, loss, optim, train, augment, output."""

    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    output: OutputConfig = OutputConfig()


def describe_config(model_cls: type[BaseModel] = Config, prefix: str = "") -> str:
    """One line per key: dotted name, default and description (for `main.py --help`)."""
    lines = []
    for name, field in model_cls.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{prefix}{name}:  {annotation.__doc__.strip().splitlines()[0]}")
            lines.append(describe_config(annotation, prefix + name + "."))
        else:
            text = f"  {prefix}{name} (required)" if field.is_required() else f"  {prefix}{name} = {field.default!r}"
            lines.append(text + (f"  # {field.description}" if field.description else ""))
    return "\n".join(lines)
