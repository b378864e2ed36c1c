"""bench/dry_run.py end to end in its --tiny mode: every step runs, the results JSON and table are written."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_tiny_end_to_end(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    proc = subprocess.run([sys.executable, "-m", "bench.dry_run", "--tiny", "--work", str(tmp_path / "work"),
                           "--members", "2", "--predict-members", "1", "--out-json", str(out_json),
                           "--out-md", str(out_md)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out_json.read_text())
    steps = [row["step"] for row in report["steps"]]
    assert steps[:4] == ["generate", "download train", "download test", "crop caches"]
    assert "train 2 steps" in steps and "resume to 4 steps" in steps and "package 2 members" in steps
    assert all(row["rc"] == 0 and row["wall_s"] > 0 and row["peak_rss_gb"] > 0 for row in report["steps"])
    assert report["checkpoint_files"]["checkpoint.pt"]["size_gb"] > report["checkpoint_files"]["model.pt"]["size_gb"]
    predicted = [row for row in report["steps"] if row["step"].startswith("predict")]
    assert [row["rois"] for row in predicted] == [80, 80] and all(row["members"] == 1 for row in predicted)
    assert 0 <= report["bf16"]["identical_labels"] <= 1
    assert report["bf16"]["member_model_pt_gb_bf16"] < report["bf16"]["member_model_pt_gb_fp32"]
    metrics = (tmp_path / "work" / "runs" / "member" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,steps") and [line.split(",")[1] for line in metrics[1:]] == ["2", "4"]
    assert "| train 2 steps |" in out_md.read_text()


def test_dry_run_help():
    proc = subprocess.run([sys.executable, "-m", "bench.dry_run", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--tiny" in proc.stdout and "--members" in proc.stdout
