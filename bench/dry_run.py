"""Full-size dry run on the CPU: every step of the real recipe once, at its real sizes, timed and weighed.

    python -m bench.dry_run [--work outputs/dry_run] [--members 8] [--predict-members 8] [--batch-size 4]
    python -m bench.dry_run --tiny      # the same steps on the 'tiny' preset with a tiny model (tests)

Steps (each in its own process, so that its peak resident memory is its own):
  generate   python -m src.synthetic --preset fathomnet --seed 0 (23,699 train / 788 test ROIs)
  download   python -m src.data.download for both splits (file:// frames -> ROI crops)
  cache      the crop caches of both splits at cfg/wrn_dwce.yaml's size (128 px cache, 112 px crops)
  train      python main.py cfg/wrn_dwce.yaml train.max_steps=2 (WRN-101-2, 100 heads; no pretrained weights:
             there is no network; no validation split, so the steps are the measure)
  resume     the same run resumed to train.max_steps=4
  save       model.pt and checkpoint.pt loaded and written again (atomically, as training does): their sizes
             and read / write times
  package    src.stages.package of N members: the ONE trained member linked as N seeds (a dry run: the
             members are identical; their test predictions are placeholders, the decoder is argmax)
  predict    the 788 test ROIs through the Kaggle notebook's code path (src.manifest.read_package with
             checksums, src.inference.predict_ensemble, decode_predictions) with the first K members
  bf16       the same with the package's weights stored in bfloat16 (half the size): the fraction of test ROIs
             whose argmax label is the same as with float32 weights

Writes bench/results_dry_run.json and bench/results_dry_run.md (or --out-json / --out-md). Generated data,
runs and packages stay under --work (not committed). A step that already finished in --work is redone; the
data (generate/download) is reused when --reuse-data is given.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "cfg" / "wrn_dwce.yaml"
# The dry run's training overrides: no network (no pretrained weights), no validation split (the steps are the
# measure), DataLoader in the main process (num_workers 0), no progress bars.
DRY_OVERRIDES = ["model.pretrained=false", "data.val_fraction=0", "data.shifted_val=false", "data.num_workers=0",
                 "train.progress=false", "train.epochs=30"]
# --tiny: cfg/demo_tiny.yaml's model on the 'tiny' preset (seconds), for the test of this script.
TINY_OVERRIDES = ["data.image_size=16", "data.cache_size=16", "model.backbone=wrn10_1", "model.num_heads=2",
                  "model.head_hidden=16", "model.channels_last=false", "train.threads=1",
                  "augment.rrc_scale=[0.5,1.0]", "augment.downscale=null"]


def disk_bytes(path: Path) -> int:
    """Bytes used by the files under path (hard links counted once)."""
    seen, total = set(), 0
    for p in path.rglob("*") if path.is_dir() else [path]:
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        if p.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def run_step(name: str, cmd: list[str], work: Path, results: list[dict], env: dict | None = None,
             **extra) -> dict:
    """Run one step as a child process; record wall time, its peak RSS (wait4's rusage) and the disk used
    under `work` afterwards."""
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    row = {"step": name, "wall_s": round(time.perf_counter() - started, 2),
           "peak_rss_gb": round(usage.ru_maxrss / 2**20, 4), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "disk_gb": round(disk_bytes(work) / 1e9, 6), "rc": proc.returncode, **extra}
    results.append(row)
    print(f"    -> {row}", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed with exit code {proc.returncode}")
    return row


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


# ------------------------------------------------------------------------- steps run in a child process
def phase_cache(args) -> None:
    """Build both crop caches as training does (src.data.training.load_split)."""
    from src.config import Config, load_config
    from src.data.training import load_split
    from src.taxonomy import load_taxonomy

    cfg = load_config(Config, RECIPE, json.loads(args.overrides))
    taxonomy = load_taxonomy()
    for split in ("train", "test"):
        cache = load_split(cfg, taxonomy, split, progress=False)
        print(f"    {split}: crops {tuple(cache.crops.shape)} {cache.crops.nbytes / 1e9:.2f} GB")


def phase_save(args) -> None:
    """Load model.pt and checkpoint.pt and write them again atomically (as src.checkpoint does): times."""
    import torch

    from src.artifacts import atomic_write_with
    from src.serialization import load_state_file

    out = {}
    for name in ("model.pt", "checkpoint.pt"):
        path = Path(args.run) / name
        start = time.perf_counter()
        state = load_state_file(path)
        load_s = time.perf_counter() - start
        copy = path.with_name(f"rewrite_{name}")
        start = time.perf_counter()
        atomic_write_with(copy, partial(torch.save, state))
        write_s = time.perf_counter() - start
        out[name] = {"size_gb": round(path.stat().st_size / 1e9, 6), "load_s": round(load_s, 2),
                     "write_s": round(write_s, 2)}
        copy.unlink()
        del state
    params = sum(v.numel() for v in load_state_file(Path(args.run) / "model.pt")["model"].values())
    out["model_parameters"] = params
    Path(args.result).write_text(json.dumps(out))


def phase_predict(args) -> None:
    """The Kaggle notebook's path: read_package (checksums verified), predict_ensemble, decode_predictions."""
    from src.inference import decode_predictions, predict_ensemble
    from src.manifest import check_package_decoder, package_decoding, read_package
    from src.taxonomy import load_taxonomy

    start = time.perf_counter()
    root, manifest = read_package(args.package, verify=True)
    verify_s = time.perf_counter() - start
    taxonomy = load_taxonomy(root / manifest["taxonomy_file"])
    decoder = check_package_decoder(manifest, "argmax")
    decoding = package_decoding(root, manifest)
    members = [root / m["dir"] for m in manifest["members"]][:args.predict_members]
    data = Path(args.data)
    start = time.perf_counter()
    preds = predict_ensemble(members, data / "dataset_test.json", Path(args.work) / "crop_cache",
                             images_dir=data / "test" / "images", device="cpu", batch_size=args.batch_size,
                             taxonomy=taxonomy, progress=False)
    predict_s = time.perf_counter() - start
    rows = decode_predictions(preds, decoder, decoding, taxonomy)
    rows.to_csv(args.result.replace(".json", ".csv"), index=False)
    import numpy as np
    np.save(args.result.replace(".json", ".npy"), preds.mean.astype(np.float32))
    Path(args.result).write_text(json.dumps({
        "verify_s": round(verify_s, 2), "predict_s": round(predict_s, 2), "members": len(members),
        "rois": int(len(rows)), "per_member_s": round(predict_s / len(members), 2)}))


def to_bf16_package(src: Path, dst: Path, members: int) -> None:
    """A copy of the package whose first `members` members' weights are stored in bfloat16 (checksums
    updated); src.inference.load_member loads them into the float32 model unchanged."""
    import torch

    from src.manifest import MANIFEST, sha256
    from src.serialization import load_state_file

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("members"))
    manifest = json.loads((src / MANIFEST).read_text())
    manifest["members"] = manifest["members"][:members]
    for entry in manifest["members"]:
        (dst / entry["dir"]).mkdir(parents=True)
        for f in (src / entry["dir"]).iterdir():
            if f.name != "model.pt":
                shutil.copy2(f, dst / entry["dir"] / f.name)
        state = load_state_file(src / entry["dir"] / "model.pt")
        state["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state["model"].items()}
        torch.save(state, dst / entry["dir"] / "model.pt")
        entry["model_sha256"] = sha256(dst / entry["dir"] / "model.pt")
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=1))


def fake_pipeline(work: Path, run: Path, members: int, train_overrides: list[str]):
    """A pipeline run of `members` seeds, round 0 only, each member the trained run (files hard-linked), with
    done.json and placeholder test predictions so that src.stages.package accepts it."""
    import numpy as np

    from src.artifacts import atomic_save_npz, atomic_write_json
    from src.stages.pipeline_config import PipelineConfig
    from src.taxonomy import load_taxonomy

    names = np.array(load_taxonomy().names)
    cfg = PipelineConfig(name="dry", data_root=str(work / "data"), seeds=list(range(members)), rounds=0,
                         output_root=str(work / "pipeline"), submissions_dir=str(work / "submissions"),
                         decoding={"decoders": ["argmax", "bayes"]})
    test_ids = np.array(sorted(a["id"] for a in json.loads((work / "data" / "dataset_test.json").read_text())
                               ["annotations"]))
    for seed in cfg.seeds:
        member = cfg.layout.member_dir(0, seed)
        if member.exists():
            shutil.rmtree(member)
        member.mkdir(parents=True)
        for name in ("model.pt", "config.yaml", "metrics.csv"):
            os.link(run / name, member / name)
        atomic_save_npz(member / "test_probs.npz", annotation_id=test_ids, classes=names,
                        probs=np.full((1, len(test_ids), len(names)), 1 / len(names), np.float32))
        atomic_write_json(member / "done.json", {"dry_run": True, "copied_from": str(run)})
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dry_run", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "outputs" / "dry_run", help="work folder (default %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="'tiny' preset and a tiny model: the script end to end in seconds")
    parser.add_argument("--members", type=int, default=8, help="members in the package (default 8)")
    parser.add_argument("--predict-members", type=int, default=None,
                        help="members used for the test prediction (default: all); time per member is reported")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size (default 4)")
    parser.add_argument("--eval-batch-size", type=int, default=32, help="prediction batch size (default 32)")
    parser.add_argument("--steps", type=int, default=2, help="train.max_steps of the first run; the resume goes to 2x")
    parser.add_argument("--render-scale", type=float, default=None, help="src.synthetic --render-scale (default its own)")
    parser.add_argument("--reuse-data", action="store_true", help="keep generated and downloaded data in --work")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bfloat16 package comparison")
    parser.add_argument("--out-json", type=Path, default=REPO / "bench" / "results_dry_run.json")
    parser.add_argument("--out-md", type=Path, default=REPO / "bench" / "results_dry_run.md")
    parser.add_argument("--report", type=Path, default=None,
                        help="only rewrite --out-md from this results JSON (no step runs)")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # internal: one step in a child
    parser.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--package", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        {"cache": phase_cache, "save": phase_save, "predict": phase_predict}[args.phase](args)
        return 0
    if args.report:
        args.out_md.write_text(markdown(json.loads(args.report.read_text())) + "\n")
        print(args.out_md.read_text())
        return 0

    work = args.work.resolve()
    data = work / "data"
    preset = "tiny" if args.tiny else "fathomnet"
    args.predict_members = min(args.predict_members or args.members, args.members)
    overrides = [f"data.root={data}", f"output.dir={work / 'runs'}", "output.run_name=member",
                 f"train.batch_size={args.batch_size}", f"train.eval_batch_size={args.eval_batch_size}",
                 *DRY_OVERRIDES, *(TINY_OVERRIDES if args.tiny else [])]
    if not args.reuse_data and work.exists():
        shutil.rmtree(work)
    for folder in ("runs", "pipeline", "package", "package_bf16", "crop_cache", "submissions"):
        shutil.rmtree(work / folder, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    env = {"PYTHONPATH": str(REPO)}
    started, load_before = time.time(), list(os.getloadavg())

    if not (data / "dataset_test.json").is_file() or not (data / "test" / "rois").is_dir():
        gen = python("-m", "src.synthetic", "--out", str(data), "--preset", preset, "--seed", "0", "--no-progress",
                     *(["--workers", "1"] if args.tiny else []))
        if args.render_scale:
            gen += ["--render-scale", str(args.render_scale)]
        run_step("generate", gen, work, results, env)
        for split in ("train", "test"):
            run_step(f"download {split}", python("-m", "src.data.download", str(data / f"dataset_{split}.json"),
                                                 str(data / split), "--no-progress"), work, results, env)
    run_step("crop caches", python("-m", "bench.dry_run", "--phase", "cache", "--overrides", json.dumps(overrides)),
             work, results, env)
    run = work / "runs" / "member"
    recipe = str(RECIPE)
    run_step(f"train {args.steps} steps", python("main.py", recipe, *overrides, f"train.max_steps={args.steps}"),
             work, results, env, batch_size=args.batch_size)
    run_step(f"resume to {2 * args.steps} steps",
             python("main.py", recipe, *overrides, f"train.max_steps={2 * args.steps}", "train.resume=true"),
             work, results, env, batch_size=args.batch_size)
    files = work / "save.json"
    run_step("save: reload + rewrite model.pt, checkpoint.pt",
             python("-m", "bench.dry_run", "--phase", "save", "--run", str(run), "--result", str(files)),
             work, results, env)
    saved = json.loads(files.read_text())

    sys.path.insert(0, str(REPO))
    cfg = fake_pipeline(work, run, args.members, overrides)
    config = work / "pipeline.json"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))
    package_dir = work / "package"
    run_step(f"package {args.members} members", python("-m", "src.stages.package", str(config), "--out",
                                                      str(package_dir), "--decoder", "argmax"),
             work, results, env, members=args.members, package_gb=None)
    results[-1]["package_gb"] = round(disk_bytes(package_dir) / 1e9, 6)
    shutil.rmtree(work / "pipeline")  # its model.pt files are links to the run's; the package holds copies

    predictions = {}
    variants = [("fp32", package_dir)]
    if not args.no_bf16:
        to_bf16_package(package_dir, work / "package_bf16", args.predict_members)
        variants.append(("bf16", work / "package_bf16"))
    for name, folder in variants:
        result = work / f"predict_{name}.json"
        run_step(f"predict 788 test ROIs ({name} weights)" if not args.tiny else f"predict ({name} weights)",
                 python("-m", "bench.dry_run", "--phase", "predict", "--package", str(folder), "--data", str(data),
                        "--work", str(work), "--batch-size", str(args.eval_batch_size),
                        "--predict-members", str(args.predict_members), "--result", str(result)),
                 work, results, env)
        predictions[name] = json.loads(result.read_text())
        results[-1].update(predictions[name], package_gb=round(disk_bytes(folder) / 1e9, 6))
    agreement = None
    if "bf16" in predictions:
        import numpy as np
        import pandas as pd
        a, b = (pd.read_csv(work / f"predict_{n}.csv") for n in ("fp32", "bf16"))
        pa, pb = (np.load(work / f"predict_{n}.npy") for n in ("fp32", "bf16"))
        agreement = {"identical_labels": float((a["concept_name"] == b["concept_name"]).mean()),
                     "max_abs_prob_diff": float(np.abs(pa - pb).max()),
                     "distinct_labels_fp32": int(a["concept_name"].nunique()),
                     "member_model_pt_gb_fp32": round((package_dir / "members" / "seed_0" / "model.pt").stat().st_size / 1e9, 6),
                     "member_model_pt_gb_bf16": round((work / "package_bf16" / "members" / "seed_0" / "model.pt")
                                                      .stat().st_size / 1e9, 6)}

    report = {
        "command": " ".join(["python -m bench.dry_run", *(argv if argv is not None else sys.argv[1:])]),
        "preset": preset, "recipe": str(RECIPE.relative_to(REPO)), "overrides": overrides,
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_before": load_before, "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)), "total_s": round(time.time() - started, 1),
        "steps": results, "checkpoint_files": saved, "bf16": agreement,
        "notes": ["the package holds the ONE trained member linked as N seeds: identical members",
                  "members' test_probs.npz in the pipeline layout are placeholders; the decoder is argmax",
                  "model.pretrained=false (no network); data.val_fraction=0 (no validation split)",
                  "the bf16 package holds only the members predicted with (--predict-members); a model trained a "
                  "few steps has nearly uniform probabilities, so its bf16 label agreement understates a trained "
                  "model's"],
    }
    try:
        from src.runtime import cpu_model
        report["machine"]["cpu"] = cpu_model()
    except Exception:  # noqa: BLE001 - informational only
        pass
    report["machine"]["load_after"] = list(os.getloadavg())
    args.out_json.write_text(json.dumps(report, indent=1) + "\n")
    args.out_md.write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    lines = [f"# Dry run ({report['preset']} preset, {report['recipe']})", "",
             f"`{report['command']}` on {report['machine']['cpu']} ({report['machine']['cpus']} CPUs, shared with "
             f"other jobs: load average {', '.join(f'{x:.2f}' for x in report['machine']['load_before'])} at the start, "
             f"{', '.join(f'{x:.2f}' for x in report['machine']['load_after'])} at the end), started {report['started']} UTC, total "
             f"{report['total_s']} s.", "",
             "| step | wall s | CPU s | peak RSS MB | disk under work MB | other |", "|---|---:|---:|---:|---:|---|"]
    for row in report["steps"]:
        other = ", ".join(f"{k} {v * 1000:.1f} MB" if k.endswith("_gb") else f"{k} {v}" for k, v in row.items()
                          if k not in ("step", "wall_s", "cpu_s", "peak_rss_gb", "disk_gb", "rc") and v is not None)
        lines.append(f"| {row['step']} | {row['wall_s']} | {row['cpu_s']} | {row['peak_rss_gb'] * 1000:,.0f} | "
                     f"{row['disk_gb'] * 1000:,.1f} | {other} |")
    files = report["checkpoint_files"]
    lines += ["", f"Model parameters: {files['model_parameters']:,}.", "",
              "| file | size MB | load s | write s |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {v['size_gb'] * 1000:,.1f} | {v['load_s']} | {v['write_s']} |" for name, v in files.items()
              if isinstance(v, dict)]
    if report["bf16"]:
        b = report["bf16"]
        lines += ["", f"bf16 package weights: member model.pt {b['member_model_pt_gb_bf16'] * 1000:,.1f} MB vs "
                      f"{b['member_model_pt_gb_fp32'] * 1000:,.1f} MB fp32; identical argmax labels on the test ROIs "
                      f"{b['identical_labels']:.4f}; max |p_bf16 - p_fp32| {b['max_abs_prob_diff']:.2e}; "
                      f"distinct labels (fp32) {b['distinct_labels_fp32']}."]
    lines += ["", "Notes: " + "; ".join(report["notes"]) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
