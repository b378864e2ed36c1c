"""preferred_decoder with no decoder left (every one skipped) is a clear DecoderError (exit code 2 in the stages), not an IndexError
(defect 10)."""
import pytest

from src.decoding import DecoderError, preferred_decoder


def test_no_decoder_left_is_a_stage_error():
    with pytest.raises(DecoderError, match="no decoder"):
        preferred_decoder([])
    assert preferred_decoder(["argmax"]) == "argmax"
