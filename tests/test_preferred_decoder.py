"""preferred_decoder with no decoder left (every one skipped) is a clear StageError, not an IndexError
(defect 10)."""
import pytest

from src.stages.common import StageError, preferred_decoder


def test_no_decoder_left_is_a_stage_error():
    with pytest.raises(StageError, match="no decoder"):
        preferred_decoder([])
    assert preferred_decoder(["argmax"]) == "argmax"
