"""Atomic writes and the clean-up of temp files that killed runs left behind (src.artifacts)."""
import errno
import os
import time

import pytest

from src.artifacts import TEMP_PATTERN, atomic_path, atomic_write_text, exit_code, remove_stale_temps


def test_remove_stale_temps_removes_only_old_temps_of_this_folder(tmp_path):
    stale = [tmp_path / ".frame.png.k2j3h4.tmp", tmp_path / ".curves.png.abc.tmp"]
    for path in stale:
        path.write_text("partial")
        os.utime(path, (time.time() - 100, time.time() - 100))
    fresh = tmp_path / ".live.csv.xyz.tmp"
    fresh.write_text("being written")
    kept = [tmp_path / "result.tmp", tmp_path / ".hidden", tmp_path / "sub" / ".deep.png.q.tmp"]
    kept[2].parent.mkdir()
    for path in kept:
        path.write_text("keep")
    assert remove_stale_temps(tmp_path, min_age_s=10) == 2
    assert not any(p.exists() for p in stale) and fresh.exists() and all(p.exists() for p in kept)
    assert remove_stale_temps(tmp_path) == 1 and not fresh.exists()
    assert remove_stale_temps(tmp_path / "absent") == 0


def test_atomic_temps_match_the_clean_up_pattern(tmp_path):
    with atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("x")
        assert list(tmp_path.glob(TEMP_PATTERN)) == [tmp]  # what a killed run would leave
    atomic_write_text(tmp_path / "b.txt", "y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.txt"]


def test_exit_code_maps_input_problems_to_2_failed_writes_to_1_and_lets_bugs_raise(capsys):
    def raising(err):
        def action():
            raise err
        return action
    assert exit_code(lambda: None, (ValueError,)) == 0
    assert exit_code(raising(ValueError("bad threshold")), (ValueError,)) == 2
    assert capsys.readouterr().err == "error: bad threshold\n"
    assert exit_code(raising(OSError(errno.ENOSPC, "No space left on device", "/out/a.csv")), (ValueError,)) == 1
    assert capsys.readouterr().err == "error: /out/a.csv: No space left on device\n"
    assert exit_code(raising(FileNotFoundError(errno.ENOENT, "gone", "x.json")), (FileNotFoundError,)) == 2
    with pytest.raises(KeyError):  # not an input problem: its traceback shows
        exit_code(raising(KeyError("bug")), (ValueError,))
    with pytest.raises(ConnectionResetError):  # an OSError that is no failed write
        exit_code(raising(ConnectionResetError(errno.ECONNRESET, "reset")), (ValueError,))
