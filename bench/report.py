"""Benchmark report: run the speed benches in-process, read the accuracy runs, write bench/RESULTS.md + plots.

    python -m bench.report                 # full speed benches + accuracy tables from outputs/bench/accuracy
    python -m bench.report --quick         # small speed settings (about a minute)
    python -m bench.report --speed-from outputs/bench/speed.json   # reuse saved speed results

The accuracy numbers come from `python -m bench.accuracy` (run it first; it may still be running: the
report tabulates whatever runs are complete). Speed results are saved to --speed-json; RESULTS.md records
the command, date, machine (CPU model, cores, load average), git commit and the settings of every table.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import REPO, format_speed_row, load_average, machine_info, speed_row, target_check
from src.artifacts import atomic_write_json, atomic_write_text, atomic_write_with

MB = 2 ** 20


# ------------------------------------------------------------------------------------------- speed
def run_speed(quick: bool, accuracy_root: str | None, workdir: Path) -> dict:
    """Every speed bench in this process; settings depend on `quick`. Returns their raw results."""
    from bench import bench_data, bench_ensemble, bench_scaling, bench_score, bench_train

    out = {"quick": quick, "load_average_start": list(load_average())}
    print("== scorer", flush=True)
    out["score"] = bench_score.main(["--rows", "100000" if quick else "1000000"])
    print("== ensemble post-processing", flush=True)
    out["ensemble"] = bench_ensemble.main([])
    print("== training-side (loss, heads, demo model)", flush=True)
    out["train"] = bench_train.main(["--repeats", "5" if quick else "20", "--out", str(workdir / "bench_train.json")]
                                    + (["--skip-large-heads"] if quick else []))
    print("== data path", flush=True)
    out["data"] = bench_data.main(["--frames", "20", "--items", "300"] if quick else ["--items", "1000"])
    print("== scaling", flush=True)
    demo_root = REPO / "inputs" / "synthetic" / "demo"
    scaling = ["--batches", "5" if quick else "30"]
    if not quick:
        scaling += ["--presets", "tiny", "demo"]
        if accuracy_root and Path(accuracy_root).is_dir():
            scaling += ["bench", "--bench-root", str(accuracy_root)]
    else:
        scaling += ["--presets", "tiny"]
    if demo_root.is_dir():
        scaling += ["--root", str(demo_root)]
    else:  # no demo data: the worker test runs on the tiny preset generated here
        from src.data.download import download_split
        from src.data.synthetic import generate_benchmark

        root = generate_benchmark(workdir / "tiny", "tiny", seed=0, progress=False)
        for split in ("train", "test"):
            download_split(root / f"dataset_{split}.json", root / split, progress=False)
        scaling += ["--root", str(root)]
    out["scaling"] = bench_scaling.main(scaling)
    out["load_average_end"] = list(load_average())
    return out


def speed_rows(s: dict) -> list[dict]:
    """The issue's speed targets as rows: figure, reference (same run), ratio, target, verdict."""
    rows = []

    def add(name, figure, reference, unit, ratio, target_text, target, higher=True):
        rows.append(speed_row(name, figure, reference, unit, ratio, target_text, target_check(ratio, target, higher)))

    d = s["data"]
    add("crop cache read + albumentations train aug vs PNG decode + PIL/torchvision (1 process)",
        d["cache_1_process"], d["png_1_process"], "crops/s", d["ratio_1_process"], ">= 5x", 5.0)
    add(f"the same through a DataLoader with {d['workers']} workers", d["cache_workers"], d["png_workers"], "crops/s",
        d["ratio_workers"], ">= 5x", 5.0)
    for h in s["train"]["heads"]:
        add(f"batched heads vs loop of H={h['H']} heads, F={h['F']}, B={h['B']}, fwd+bwd", h["batched_ms"],
            h["loop_ms"], "ms", h["loop_over_batched"], ">= 3x", 3.0)
    loss = s["train"]["loss"]
    add("DW-CE vs plain CE, fwd+bwd, B=256, C=79 (ratio = DW-CE / CE cost)", loss["dwce_ms"], loss["ce_ms"], "ms",
        loss["dwce_over_ce"], "<= 1.5x", 1.5, higher=False)
    sc = s["score"]
    add(f"local scorer (vectorised) vs row-by-row loop, {sc['rows']:,} rows", sc["vectorised_s"], sc["loop_s"], "s",
        sc["speedup"], ">= 100x", 100.0)
    e = s["ensemble"]
    total = e["total GMU + vote + Bayes"]
    rows.append(speed_row(f"ensemble post-processing (GMU, vote, Bayes), 8 models x 100 heads x 788 ROIs; peak "
                          f"{e['total_peak_bytes'] / MB:.0f} MiB allocated (inputs {e['input_bytes'] / MB:.0f} MiB); "
                          "reference = the 1 s budget", total, 1.0, "s", total / 1.0, "< 1 s",
                          "met" if total < 1.0 else "not met"))
    w = s["scaling"]["workers"]["img_per_s"]
    w = {int(k): v for k, v in w.items()}
    if 1 in w and 2 in w:
        add("demo model training (WRN-16-2 32 px, 4 heads, DW-CE) with 2 vs 1 DataLoader workers", w[2], w[1], "img/s",
            w[2] / w[1], "none (scaling)", None)
    return rows


def fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return ""
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def speed_markdown(s: dict) -> str:
    rows = speed_rows(s)
    lines = ["| measurement | figure | reference (same run) | unit | ratio | target | verdict |", "|---|---:|---:|---|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['measurement']} | {fmt(r['figure'])} | {fmt(r['reference'])} | {r['unit']} | "
                     f"{r['ratio']:.2f}x | {r['target']} | **{r['verdict']}** |")
    t = s["train"]
    w = s["scaling"]["workers"]
    again = w.get("remeasured")
    lines += ["", f"Demo model train step alone (synthetic batch, no data loading), {t['threads']} threads: "
                  f"{t['demo_model']['img_per_s']:.0f} img/s. Training with real data loading (cfg/demo_wrn_dwce.yaml "
                  f"recipe, {w['batches']} batches of {w['batch']}, {w['threads']} torch threads): "
              + ", ".join(f"{k} workers {v:.0f} img/s" for k, v in w["img_per_s"].items()) + "."
              + (f" (These worker figures were measured again at {again['date_utc']}, load average "
                 f"{', '.join(f'{x:.2f}' for x in again['load_average'])}.)" if again else "")]
    p = s["scaling"].get("presets")
    if p:
        lines += ["", f"### Pipeline wall time vs benchmark size ({p['pipeline']} recipe)", "",
                  "Measured per preset: generate, download (frames + ROI crops), crop-cache build, and one run of one "
                  "member with ONE epoch (plus its validation and test prediction). The last column is an "
                  "**extrapolation**, not a measurement: prepare + members x (rounds + 1) x (epochs x epoch time + "
                  "per-run overhead).", "",
                  "| preset | train ROIs | generate s | download s | cache s | 1 epoch s | run overhead s | "
                  "members x rounds+1 x epochs | pipeline s (extrapolated) |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
        for r in p["rows"]:
            note = " (extrapolated from demo)" if r.get("prepare_extrapolated") else ""
            lines.append(f"| {r['preset']} | {r['train_rois']} | {fmt(r.get('generate_s'))}{note} | "
                         f"{fmt(r.get('download_s'))}{note} | {fmt(r['cache_s'])} | {fmt(r['epoch_s'])} | "
                         f"{fmt(r['run_overhead_s'])} | {r['members']} x {r['rounds'] + 1} x {r['epochs']} | "
                         f"{fmt(r['pipeline_extrapolated_s'])} |")
    gpu = t.get("gpu_wrn101")
    gpu_section = REPO / "bench" / "results_gpu.md"  # written by `python -m bench.bench_gpu` on a GPU machine
    if gpu_section.is_file():
        lines += ["", gpu_section.read_text().strip()]
    else:
        lines += ["", "### GPU", "", f"{gpu}" if gpu else "No GPU on this machine: the GPU section (wide_resnet101_2 "
                  "at 112 px, fp32 vs bf16 + channels_last) was not measured; `python -m bench.bench_gpu` measures it."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- accuracy
def mean_std(values: list[float]) -> str:
    """'m +- s (n)' over seeds; the std is the sample std (n-1), blank for one seed."""
    if not values:
        return ""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.3f} (n=1)"
    return f"{v.mean():.3f} +- {v.std(ddof=1):.3f} (n={len(v)})"


def single_table(acc: dict) -> str:
    lines = ["| model (one run per seed) | argmax distance | argmax accuracy | Bayes distance | Bayes accuracy |",
             "|---|---|---|---|---|"]
    for name, entry in acc["single"].items():
        runs = list(entry["runs"].values())
        cells = [mean_std([r[k] for r in runs]) for k in ("argmax_distance", "argmax_accuracy", "bayes_distance",
                                                         "bayes_accuracy")]
        lines.append(f"| {entry['label']} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensemble_table(acc: dict) -> str:
    lines = ["| round | trained on | argmax distance | vote distance | Bayes distance | argmax acc | vote acc | Bayes acc |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r, e in acc["ensemble_rounds"].items():
        p = acc["pseudo_labels"].get(r)
        source = "train only" if r == "0" else (
            f"train + {p['count']} pseudo-labels ({p['coverage']:.0%} of test, {p['accuracy']:.0%} correct)" if p else "?")
        lines.append(f"| {r} | {source} | {e['argmax_distance']:.3f} | {e['vote_distance']:.3f} | {e['bayes_distance']:.3f} | "
                     f"{e['argmax_accuracy']:.3f} | {e['vote_accuracy']:.3f} | {e['bayes_accuracy']:.3f} |")
    return "\n".join(lines)


def pseudo_table(acc: dict, quantile_rows: int = 5) -> str:
    """Accuracy vs coverage of the pseudo-labels made from round 0's ensemble (round 1's file)."""
    p = acc["pseudo_labels"].get("1")
    if not p or not p.get("curves"):
        return "(no pseudo-labels yet)"
    lines = ["| min_votes | U threshold | coverage | count | accuracy | mean distance |", "|---:|---:|---:|---:|---:|---:|"]
    by_k: dict = {}
    for c in p["curves"]:
        by_k.setdefault(c["min_votes"], []).append(c)
    for k, curve in sorted(by_k.items()):
        picks = np.unique(np.linspace(0, len(curve) - 1, quantile_rows).round().astype(int))
        for i in picks:
            c = curve[i]
            lines.append(f"| {k} | {c['u_threshold']:.3f} | {c['coverage']:.3f} | {c['count']} | "
                         f"{fmt(c.get('accuracy'))} | {fmt(c.get('mean_distance'))} |")
    return "\n".join(lines)


def _mean(acc: dict, name: str, key: str) -> tuple[float, float, int] | None:
    entry = acc["single"].get(name)
    if not entry:
        return None
    v = np.array([r[key] for r in entry["runs"].values()])
    return v.mean(), (v.std(ddof=1) if len(v) > 1 else float("nan")), len(v)


def compare(acc: dict, a: str, b: str, key: str, what: str) -> str:
    """One sentence: is `a` better than `b` on `key` (lower distance), beyond the seeds' spread?"""
    ma, mb = _mean(acc, a, key), _mean(acc, b, key)
    if not ma or not mb:
        return f"- {what}: not measured (runs missing)."
    diff = ma[0] - mb[0]
    spread = max(ma[1], mb[1]) if min(ma[2], mb[2]) >= 2 else float("nan")
    if not np.isfinite(spread):
        verdict = "one seed only: no claim"
    elif abs(diff) > 2 * spread:
        verdict = "supported (difference > 2 x the larger seed std)" if diff < 0 else "contradicted on this benchmark"
    else:
        verdict = "within seed noise: not supported"
    return f"- {what}: {ma[0]:.3f} vs {mb[0]:.3f} (difference {diff:+.3f}, seed std {spread:.3f}): {verdict}."


def claims(acc: dict) -> str:
    out = [
        "Verdicts compare means over seeds against twice the larger seed std (unpaired; conservative).",
        compare(acc, "dwce_team", "ce", "argmax_distance", "DW-CE (team weights) lowers the mean distance vs CE (argmax)"),
        compare(acc, "dwce_team", "ce", "bayes_distance", "DW-CE (team) vs CE, both with Bayes decoding"),
        compare(acc, "dwce_paper", "dwce_team", "argmax_distance", "paper weights vs team weights (argmax)"),
        compare(acc, "ce_expdist", "ce", "argmax_distance", "CE + 0.1 x expected distance vs CE (argmax)"),
        compare(acc, "soft_labels", "ce", "argmax_distance", "soft labels vs CE (argmax)"),
        compare(acc, "dwce_ctx3", "dwce_team", "argmax_distance", "context crop (roi+ctx3) vs ROI only (DW-CE)"),
        compare(acc, "dwce_team", "dwce_no_downscale", "argmax_distance",
                "down-scaling augmentation vs none (DW-CE, shifted test split)"),
    ]
    for name, entry in acc["single"].items():
        m_arg, m_bay = _mean(acc, name, "argmax_distance"), _mean(acc, name, "bayes_distance")
        out.append(f"- Bayes decoding, {entry['label']}: {m_arg[0]:.3f} -> {m_bay[0]:.3f} "
                   f"({m_bay[0] - m_arg[0]:+.3f}, n={m_arg[2]}).")
    rounds = acc["ensemble_rounds"]
    base = _mean(acc, "dwce_team", "argmax_distance")
    if "0" in rounds and base:
        out.append(f"- Ensemble of {rounds['0']['members']} DW-CE models vs its members: argmax "
                   f"{rounds['0']['argmax_distance']:.3f}, vote {rounds['0']['vote_distance']:.3f}, Bayes "
                   f"{rounds['0']['bayes_distance']:.3f} vs member mean {base[0]:.3f} (one ensemble: no seed spread).")
    if len(rounds) > 1:
        seq = ", ".join(f"round {r}: {e['argmax_distance']:.3f}" for r, e in rounds.items())
        correct = ", ".join(f"{p['accuracy']:.0%}" for r, p in acc["pseudo_labels"].items() if p.get("accuracy") is not None)
        out.append(f"- Self-training (argmax distance of the ensemble per round; one run, no seed spread): {seq}. "
                   f"The pseudo-labels added were {correct} correct per round: self-training can only help when "
                   "they are more accurate than the model's own errors cost, which a short from-scratch training "
                   "does not reach here.")
    return "\n".join(out)


def accuracy_plot(acc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [2.2, 1, 1.2]})
    names = list(acc["single"])
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "argmax_distance", "argmax"), (0.2, "bayes_distance", "Bayes")):
        stats = [_mean(acc, n, key) for n in names]
        axes[0].bar(x + offset, [s[0] for s in stats], 0.4, yerr=[0 if not np.isfinite(s[1]) else s[1] for s in stats],
                    label=label, capsize=3)
    axes[0].set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    axes[0].set_ylabel("mean hierarchical distance (test)")
    axes[0].set_title("single models (mean +- std over seeds)")
    axes[0].legend()
    rounds = acc["ensemble_rounds"]
    if rounds:
        r = [int(k) for k in rounds]
        for key, label in (("argmax_distance", "argmax"), ("vote_distance", "vote"), ("bayes_distance", "Bayes")):
            axes[1].plot(r, [rounds[str(i)][key] for i in r], marker="o", label=label)
        axes[1].set_xticks(r)
        axes[1].set_xlabel("self-training round")
        axes[1].set_title("ensemble (DW-CE team)")
        axes[1].legend()
    p = acc["pseudo_labels"].get("1")
    if p and p.get("curves"):
        by_k: dict = {}
        for c in p["curves"]:
            if c.get("accuracy") is not None:
                by_k.setdefault(c["min_votes"], []).append(c)
        for k, curve in sorted(by_k.items()):
            axes[2].plot([c["coverage"] for c in curve], [c["accuracy"] for c in curve], marker=".", label=f">= {k} votes")
        axes[2].set_xlabel("coverage of the test ROIs (U threshold swept)")
        axes[2].set_ylabel("pseudo-label accuracy")
        axes[2].set_title("pseudo-labels from round 0's ensemble")
        axes[2].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def load_accuracy(accuracy_dir: Path) -> dict | None:
    """Re-collect the accuracy results from the run folders (fresh even while the runs go on)."""
    from bench.accuracy import Plan, collect

    saved = accuracy_dir / "accuracy.json"
    if not saved.is_file():
        return None
    acc = json.loads(saved.read_text())
    recipe = {k: v for k, v in acc["recipe_overrides"].items()}
    plan = Plan(root=Path(acc["root"]), out=accuracy_dir, seeds=acc["seeds"], epochs=acc["epochs"], rounds=acc["rounds"],
                min_votes=acc["min_votes"], train_config=acc["train_config"], recipe_overrides=recipe)
    return collect(plan)


def accuracy_markdown(acc: dict, command: str) -> str:
    recipe = json.dumps(acc["recipe_overrides"])
    return "\n".join([
        f"Benchmark: `{acc['root']}` (generated, {acc['test_rois']} test ROIs, test split shifted: smaller, blurrier "
        f"objects). Command: `{command}`.",
        f"Recipe for every model: `{acc['train_config']}` + `{recipe}` (epochs {acc['epochs']}); seeds "
        f"{acc['seeds']}; variants change only the keys named in their row. Validation split: frame-grouped, "
        "split seed 0 for every run. Mean hierarchical distance: 0 best, 12 worst; accuracy = exact concept.",
        "", "### Single models", "", single_table(acc),
        "", f"### Ensemble of the {len(acc['seeds'])} DW-CE models and self-training rounds "
            f"(pseudo-labels: >= {acc['min_votes']} votes, U >= 0)", "", ensemble_table(acc),
        "", "### Pseudo-label accuracy vs coverage (from round 0's ensemble; U = ensemble GMU certainty)", "",
        pseudo_table(acc), "", "![accuracy](results_accuracy.png)",
    ])


LIMITS = """What this benchmark can and cannot support:
- It is a **generated** benchmark (procedural shapes and textures per concept, a taxonomy-correlated
  appearance, and a shifted test split), not FathomNet images: it checks that every piece of the method
  runs end to end and compares the variants on equal terms, on small CPU models (WRN-10-2 at 32 px,
  a few epochs) trained from scratch.
- It does **not** support any claim about the competition leaderboard, the team's WRN-101-2 at 112 px with
  ImageNet weights and 30 epochs, 21 self-training rounds, or the size of the gains reported by the
  competition teams: the magnitudes (and even the signs) of small effects can differ on real images.
- With few seeds, differences smaller than about twice the seed spread are noise; the ensemble and the
  self-training rounds are one run each (no spread)."""


def write_report(out: Path, speed: dict | None, acc: dict | None, command: str, machine: dict,
                 accuracy_command: str, note: str = "") -> str:
    """RESULTS.md text (also written to `out`) and the plot beside it."""
    parts = ["# Benchmark results", "",
             f"Written by `{command}` on {machine['date_utc']}; machine: {machine['cpu']}, {machine['cores']} cores, "
             f"torch {machine.get('torch')}, Python {machine['python']}; git commit `{machine['git_commit']}`.", ""]
    parts += ["## Speed (this machine; every ratio against a reference measured in the same run)", ""]
    if speed:
        if speed.get("command"):
            parts += [f"Speed figures measured by `{speed['command']}`.", ""]
        parts += [f"Load average (1, 5, 15 min) at the start of the speed run: "
                  f"{', '.join(f'{x:.2f}' for x in speed['load_average_start'])}; at the end: "
                  f"{', '.join(f'{x:.2f}' for x in speed['load_average_end'])}"
                  + (" (quick settings)" if speed.get("quick") else "") + ". " + note, "", speed_markdown(speed), ""]
    else:
        parts += ["(speed benches not run)", ""]
    parts += ["## Accuracy on the generated benchmark", ""]
    if acc and acc["single"]:
        accuracy_plot(acc, out.parent / "results_accuracy.png")
        parts += [accuracy_markdown(acc, accuracy_command), "", "### Claims", "", claims(acc), "", LIMITS, ""]
    else:
        parts += ["(no finished accuracy runs)", ""]
    text = "\n".join(parts)
    atomic_write_text(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small speed settings (about a minute)")
    parser.add_argument("--speed-from", type=Path, help="reuse speed results saved by an earlier report run")
    parser.add_argument("--no-speed", action="store_true", help="accuracy tables only")
    parser.add_argument("--redo-workers", action="store_true",
                        help="with --speed-from: measure the DataLoader-worker scaling again and save it")
    parser.add_argument("--note", default="", help="a sentence about the measurement conditions, put in RESULTS.md")
    parser.add_argument("--speed-json", type=Path, default=Path("outputs/bench/speed.json"), help="save speed results here")
    parser.add_argument("--accuracy-dir", type=Path, default=Path("outputs/bench/accuracy"),
                        help="OUT folder of `python -m bench.accuracy`")
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.report", *(argv if argv is not None else sys.argv[1:])])
    acc = load_accuracy(args.accuracy_dir)
    speed = None
    if args.speed_from:
        speed = json.loads(args.speed_from.read_text())
        if args.redo_workers:
            from bench.bench_scaling import worker_scaling

            w = speed["scaling"]["workers"]
            load = list(load_average())
            speed["scaling"]["workers"] = worker_scaling(w["root"], w["batches"], threads=w["threads"])
            speed["scaling"]["workers"]["remeasured"] = {"date_utc": machine_info()["date_utc"], "load_average": load}
            atomic_write_json(args.speed_from, speed)
    elif not args.no_speed:
        with tempfile.TemporaryDirectory() as tmp:
            speed = run_speed(args.quick, acc["root"] if acc else None, Path(tmp))
        speed["command"] = command
        atomic_write_json(args.speed_json, speed)
    commands = sorted(args.accuracy_dir.glob("command_*.txt"))
    accuracy_command = " ; ".join(f.read_text().strip() for f in commands) or "python -m bench.accuracy"
    if speed:
        for row in speed_rows(speed):
            print(format_speed_row(row))
    write_report(args.out, speed, acc, command.strip(), machine_info(), accuracy_command, args.note)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
