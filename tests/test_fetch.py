"""Kaggle competition fetch: the offline error path and a mocked API (no network)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from src.data import fetch
from src.data.fetch import FetchError, fetch_competition

REPO_ROOT = Path(__file__).resolve().parents[1]


def _clean_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(home), KAGGLE_CONFIG_DIR=str(home / "kaggle"), XDG_CONFIG_HOME=str(home / "config"))
    return env


def test_without_credentials_fails_at_once_with_instructions(tmp_path):
    result = subprocess.run([sys.executable, "-m", "src.data.fetch", "--out", str(tmp_path / "data")],
                            cwd=REPO_ROOT, env=_clean_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""  # kaggle's own printed help is swallowed
    err = result.stderr.strip()
    assert err.startswith("error: no Kaggle credentials found")
    assert "kaggle.json" in err and "dataset_train.json" in err and str(tmp_path / "data") in err
    assert len(err.splitlines()) == 1


def test_unreachable_network_is_reported(tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(key)

    class FakeApi:
        def authenticate(self):
            pass

    fake_module = type(sys)("kaggle.api.kaggle_api_extended")
    fake_module.KaggleApi = FakeApi
    monkeypatch.setitem(sys.modules, "kaggle.api.kaggle_api_extended", fake_module)

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(fetch.socket, "create_connection", no_network)
    with pytest.raises(FetchError, match="cannot reach www.kaggle.com.*place them in"):
        fetch.kaggle_api("fathomnet-2025", tmp_path)


class FakeKaggle:
    """Stands in for KaggleApi: writes the competition zip like competition_download_files does."""

    def __init__(self, members=("dataset_train.json", "dataset_test.json"), error=None):
        self.members, self.error, self.calls = members, error, []

    def competition_download_files(self, competition, path=None, force=False, quiet=True):
        self.calls.append((competition, path, force))
        if self.error:
            raise self.error
        with zipfile.ZipFile(Path(path) / f"{competition}.zip", "w") as zf:
            for name in self.members:
                zf.writestr(name, '{"images": [], "annotations": []}')


def test_mocked_download_unpacks_the_files(tmp_path):
    api = FakeKaggle(members=("dataset_train.json", "dataset_test.json", "sample_submission.csv"))
    paths = fetch_competition("fathomnet-2025", tmp_path / "data", api=api)
    assert [p.name for p in paths] == ["dataset_train.json", "dataset_test.json"]
    assert all(p.is_file() for p in paths) and (tmp_path / "data" / "sample_submission.csv").is_file()
    assert api.calls == [("fathomnet-2025", str(tmp_path / "data"), False)]
    # present already: no API needed at all, unless forced
    assert fetch_competition("fathomnet-2025", tmp_path / "data", api=object()) == paths
    fetch_competition("fathomnet-2025", tmp_path / "data", force=True, api=api)
    assert len(api.calls) == 2


def test_files_placed_by_hand_need_no_credentials(tmp_path):
    for name in ("dataset_train.json", "dataset_test.json"):
        (tmp_path / name).write_text("{}")
    assert fetch.main(["--out", str(tmp_path)]) == 0


@pytest.mark.parametrize("api, message", [
    (FakeKaggle(error=RuntimeError("403 Forbidden: accept the rules")), "403 Forbidden.*rules"),
    (FakeKaggle(members=("dataset_train.json",)), "has no \\['dataset_test.json'\\]"),
    (FakeKaggle(members=("../escape.json",)), "outside"),
])
def test_mocked_failures_become_fetch_errors(tmp_path, api, message):
    with pytest.raises(FetchError, match=message):
        fetch_competition("fathomnet-2025", tmp_path / "data", api=api)
    assert not (tmp_path / "escape.json").exists()
