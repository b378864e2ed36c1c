"""package --weights-dtype bfloat16: members' weights stored in half the bytes, loaded by src.predict into the
float32 model, predicting (nearly) as the float32 package does."""
import json

import numpy as np
import pytest

from src.inference import load_member, predict_crops
from src.stages.cli import StageError
from src.stages.package import package
from tests.test_package import cfg  # noqa: F401  (the fixture)


def test_bfloat16_package_weights(cfg, tmp_path):  # noqa: F811
    full = package(cfg, tmp_path / "fp32")
    half = package(cfg, tmp_path / "bf16", weights_dtype="bfloat16")
    assert json.loads((half / "manifest.json").read_text())["weights_dtype"] == "bfloat16"
    a, b = (p / "members" / "seed_3" / "model.pt" for p in (full, half))
    assert b.stat().st_size < 0.6 * a.stat().st_size
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 1, 16, 16, 3), dtype=np.uint8)
    pa = predict_crops(load_member(full / "members" / "seed_3", device="cpu"), crops)
    pb = predict_crops(load_member(half / "members" / "seed_3", device="cpu"), crops)
    assert pb.dtype == np.float32 and np.abs(pa - pb).max() < 1e-2
    with pytest.raises(StageError, match="weights-dtype"):
        package(cfg, tmp_path / "x", weights_dtype="int8")
