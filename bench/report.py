"""Benchmark report: run the speed benches in-process, read the accuracy runs, write bench/RESULTS.md + plots.

    python -m bench.report                 # full speed benches + accuracy tables from outputs/bench/accuracy
    python -m bench.report --quick         # small speed settings (about a minute)
    python -m bench.report --speed-from outputs/bench/speed.json   # reuse saved speed results
    python -m bench.report --keep-speed        # accuracy tables only; the speed section of RESULTS.md stays
    python -m bench.report --keep-speed --pipeline-dirs outputs/bench/accuracy_pipeline_1   # + a 2nd pipeline

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
        from src.synthetic.generator import generate_benchmark

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
    for name in ("results_cpu.md", "results_cpu_side.md", "results_dry_run.md"):  # bench.bench_cpu, bench.dry_run
        if (REPO / "bench" / name).is_file():
            lines += ["", embedded_section((REPO / "bench" / name).read_text())]
    return "\n".join(lines)


def embedded_section(markdown: str) -> str:
    """Another report's markdown as a subsection of the speed section: its headings two levels down."""
    return "\n".join("##" + line if line.startswith("#") else line for line in markdown.strip().splitlines())


# ---------------------------------------------------------------------------------------- accuracy
def mean_std(values: list[float], digits: int = 3) -> str:
    """'m +- s (n)' over seeds; the std is the sample std (n-1), blank for one seed."""
    if not values:
        return ""
    v = np.asarray(values, dtype=float)
    if len(v) == 1:
        return f"{v[0]:.{digits}f} (n=1)"
    return f"{v.mean():.{digits}f} +- {v.std(ddof=1):.{digits}f} (n={len(v)})"


def _runs(acc: dict, name: str) -> dict:
    entry = acc["single"].get(name)
    return entry["runs"] if entry else {}


def paired(acc: dict, a: str, b: str, key: str, key_b: str | None = None) -> dict | None:
    """Paired by seed: per seed the difference of `key` of variant a minus `key_b` (default `key`) of variant
    b; mean, sample std, n and a verdict. A difference holds when every seed agrees on its sign and the mean
    is more than twice its standard error, on at least 3 seeds."""
    return paired_runs(_runs(acc, a), _runs(acc, b), key, key_b)


def paired_runs(ra: dict, rb: dict, key: str, key_b: str | None = None) -> dict | None:
    """`paired` on two {seed: metrics} dicts."""
    key_b = key_b or key
    seeds = sorted(s for s in set(ra) & set(rb) if key in ra[s] and key_b in rb[s])
    seeds = sorted(seeds, key=int)
    if not seeds:
        return None
    d = np.array([ra[s][key] - rb[s][key_b] for s in seeds])
    mean = float(d.mean())
    if len(d) < 2:
        return {"n": 1, "mean": mean, "std": float("nan"), "verdict": "one seed: no claim"}
    std = float(d.std(ddof=1))
    se = std / np.sqrt(len(d))
    same_sign = bool(np.all(d < 0) or np.all(d > 0))
    holds = same_sign and abs(mean) > 2 * se
    verdict = ("lower" if mean < 0 else "higher") if holds else "within seed noise"
    if len(d) < 3:  # the issue's floor: two seeds agree in sign by chance half the time
        verdict = "two seeds: no claim"
    return {"n": len(d), "mean": mean, "std": std, "verdict": verdict}


def _paired_text(p: dict | None, digits: int = 3) -> str:
    if not p:
        return "-"
    spread = "" if p["n"] < 2 else f" +- {p['std']:.{digits}f}"
    return f"{p['mean']:+.{digits}f}{spread} (n={p['n']}): {p['verdict']}"


def single_table(acc: dict) -> str:
    """Every single-model variant: argmax and Bayes test distance and accuracy, distinct labels, validation
    accuracy, and the paired difference to the variant it is compared with."""
    lines = ["| model (one run per seed) | argmax distance | argmax accuracy | Bayes distance | Bayes accuracy | "
             "frame Bayes distance | distinct labels | validation accuracy | vs | paired difference, argmax distance | "
             "paired difference, Bayes distance |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in acc["single"].items():
        runs = list(entry["runs"].values())
        cells = [mean_std([r[k] for r in runs]) for k in ("argmax_distance", "argmax_accuracy", "bayes_distance",
                                                         "bayes_accuracy")]
        cells.append(mean_std([r["frame_bayes_distance"] for r in runs if "frame_bayes_distance" in r]))
        cells.append(mean_std([r["argmax_distinct"] for r in runs], 1))
        cells.append(mean_std([r["val_accuracy"] for r in runs if "val_accuracy" in r]))
        against = entry.get("against")
        cells += [f"`{against}`" if against else "-",
                  _paired_text(paired(acc, name, against, "argmax_distance")) if against else "-",
                  _paired_text(paired(acc, name, against, "bayes_distance")) if against else "-"]
        lines.append(f"| {entry['label']} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def size_table(acc: dict, names=("dwce_team", "dwce_ctx3", "dwce_frame", "dwce_downscale", "ce")) -> str:
    """Accuracy by quarter of the test box size (q1 smallest) of the context and down-scaling variants."""
    lines = ["| model | q1 (smallest boxes) | q2 | q3 | q4 (largest) | q3 - q1 |", "|---|---|---|---|---|---|"]
    for name in names:
        runs = list(_runs(acc, name).values())
        if not runs:
            continue
        cells = [mean_std([r[f"acc_{q}"] for r in runs]) for q in ("q1", "q2", "q3", "q4")]
        cells.append(mean_std([r["acc_q3"] - r["acc_q1"] for r in runs]))
        lines.append(f"| {acc['single'][name]['label']} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


DECODER_COLUMNS = ("argmax", "vote", "bayes", "bayes_cal", "diffusion", "frame_bayes", "frame_argmax")


def _decoder_cells(e: dict) -> list[str]:
    return [f"{e[f'{d}_distance']:.3f} / {e[f'{d}_accuracy']:.3f} / {e[f'{d}_distinct']}" if f"{d}_distance" in e
            else "-" for d in DECODER_COLUMNS]


def ensemble_size_table(acc: dict) -> str:
    """Ensembles of the first k DW-CE seeds, every decoder (distance / accuracy / distinct labels)."""
    sizes = acc.get("ensemble_sizes") or {}
    if not sizes:
        return "(not measured yet)"
    members = _runs(acc, "dwce_team")
    lines = ["| members | member mean argmax distance | " + " | ".join(DECODER_COLUMNS) + " | frame weights |",
             "|---|---|" + "---|" * (len(DECODER_COLUMNS) + 1)]
    for k, e in sizes.items():
        seeds = sorted(members, key=int)[: int(k)]
        member_mean = np.mean([members[s]["argmax_distance"] for s in seeds])
        weights = ", ".join(f"{n} {w:.2f}" for n, w in (e.get("frame_weights") or {}).items()) or "-"
        lines.append(f"| {k} | {member_mean:.3f} | " + " | ".join(_decoder_cells(e)) + f" | {weights} |")
    return "\n".join(lines + ["", subsets_table(acc)])


def subsets_table(acc: dict) -> str:
    """Argmax and Bayes distance over every k-subset of the DW-CE seeds (the seed choice's spread)."""
    subsets = acc.get("ensemble_subsets")
    if not subsets:
        return "Every k-subset of the DW-CE seeds: (not measured yet: needs more seeds than the pipeline's)."
    cell = lambda f: f"{f['mean']:.3f}" + (f" +- {f['std']:.3f}" if f["std"] is not None else "") + \
        f" ({f['min']:.3f} - {f['max']:.3f})"
    lines = [f"Every k-subset of the {subsets['members']} DW-CE seeds (mean +- std over the subsets (min - max); "
             "subsets share members, so the spread is the seed choice's, not independent draws):", "",
             "| members | subsets | argmax | Bayes |", "|---|---|---|---|"]
    for k, e in subsets["sizes"].items():
        lines.append(f"| {k} | {e['argmax']['subsets']} | {cell(e['argmax'])} | {cell(e['bayes'])} |")
    return "\n".join(lines)


def rounds_table(acc: dict) -> str:
    lines = ["| round | trained on | " + " | ".join(DECODER_COLUMNS) + " |", "|---|---|" + "---|" * len(DECODER_COLUMNS)]
    for r, e in acc["ensemble_rounds"].items():
        p = acc["pseudo_labels"].get(r)
        source = "train only" if r == "0" else (
            f"train + {p['count']} pseudo-labels ({p['coverage']:.0%} of test, {p['accuracy']:.0%} right)" if p else "?")
        lines.append(f"| {r} | {source} | " + " | ".join(_decoder_cells(e)) + " |")
    coarse, scratch, p = acc.get("coarse_round_1"), acc.get("scratch_round_1"), acc["pseudo_labels"].get("1")
    if coarse:
        lines.append(f"| 1, coarse | {coarse_source(coarse.get('pseudo_labels'))} | "
                     + " | ".join(_decoder_cells(coarse)) + " |")
    if scratch:
        lines.append(f"| 1, from scratch | the same {p['count'] if p else '?'} pseudo-labels, members trained from "
                     "scratch | " + " | ".join(_decoder_cells(scratch)) + " |")
    return "\n".join(lines)


# row label, the rounds it is compared with: from-scratch members also against round 0 (the same recipe and
# epochs: the pseudo-labels' own effect)
SIDE_ROUNDS = {"coarse_round_1": ("1, coarse", ("1",)), "scratch_round_1": ("1, from scratch", ("1", "0"))}


def round_figures(acc: dict, r: str) -> dict | None:
    """One pipeline study's ensemble figures of round r ('0', '1', ...) or of a SIDE_ROUNDS section."""
    return acc.get(r) if r in SIDE_ROUNDS else (acc.get("ensemble_rounds") or {}).get(r)


def pipeline_label(acc: dict) -> str:
    return "members " + ",".join(str(s) for s in acc["seeds"])


def across_pipelines(studies: list[dict], r: str, base: str, key: str) -> dict | None:
    """Ensemble `key` of round r minus that of round `base`, paired by pipeline (each study is one pipeline,
    with its own member seeds), with `paired_runs`' verdict."""
    figures = lambda rr: {str(i): e for i, s in enumerate(studies) if (e := round_figures(s, rr))}
    return paired_runs(figures(r), figures(base), key)


def pooled_members(studies: list[dict], r: str, base: str, key: str) -> dict | None:
    """Round r's members minus round `base`'s, paired by member seed and pooled over the pipelines. Members of
    one pipeline share its pseudo-labels, so they are not independent draws: a hint beside the pipelines' pairs."""
    def members(rr):
        return {str(1000 * i + int(seed)): m for i, s in enumerate(studies)
                for seed, m in ((round_figures(s, rr) or {}).get("member_runs") or {}).items()}
    return paired_runs(members(r), members(base), key)


def pipeline_rows(studies: list[dict]) -> list[tuple[str, str, str]]:
    """(row label, round or SIDE_ROUNDS section, round it is compared with) of every round the pipeline studies
    hold: rounds 0, 1, ... (each against round 0), then the side rounds (against round 1, and as SIDE_ROUNDS
    says)."""
    rounds = sorted({r for s in studies for r in s.get("ensemble_rounds") or {}}, key=int)
    return [(r, r, "0") for r in rounds] + [(label, section, base) for section, (label, bases) in SIDE_ROUNDS.items()
                                            for base in bases]


def pipelines_table(studies: list[dict]) -> str:
    """Self-training over independent pipelines: each pipeline's ensemble distance per round (argmax / Bayes /
    frame Bayes), and the change against round 0 (the side rounds: against round 1, from-scratch members also
    against round 0) paired by pipeline, with the members' change pooled over the pipelines."""
    lines = ["| round | " + " | ".join(pipeline_label(s) for s in studies) + " | vs | ensemble, paired by pipeline: "
             "argmax | Bayes | frame Bayes | members, pooled over the pipelines: argmax |", "|---|" + "---|" * (len(studies) + 5)]
    for label, r, base in pipeline_rows(studies):
        figures = [round_figures(s, r) for s in studies]
        if not any(figures):
            continue
        cells = ["-" if e is None else " / ".join(f"{e[f'{d}_distance']:.3f}" if f"{d}_distance" in e else "-"
                                                  for d in ("argmax", "bayes", "frame_bayes")) for e in figures]
        if r == "0":
            cells += ["-"] * 5
        else:
            cells += [f"round {base}"] + [_paired_text(across_pipelines(studies, r, base, f"{d}_distance"))
                                          for d in ("argmax", "bayes", "frame_bayes")]
            cells.append(_paired_text(pooled_members(studies, r, base, "argmax_distance")))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pipeline_pseudo_table(studies: list[dict]) -> str:
    """Each pipeline's pseudo-labels per round: count, share of the test, share right."""
    rounds = sorted({r for s in studies for r in s.get("pseudo_labels") or {}}, key=int)
    lines = ["| round | " + " | ".join(pipeline_label(s) for s in studies) + " |", "|---|" + "---|" * len(studies)]
    for r in rounds:
        cells = [f"{p['count']} ({p['coverage']:.0%} of test, {p['accuracy']:.0%} right)"
                 if (p := (s.get("pseudo_labels") or {}).get(r)) else "-" for s in studies]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pipeline_claims(studies: list[dict]) -> list[str]:
    """Claim lines of self-training over the pipelines (round r vs round 0; the side rounds vs `pipeline_rows`'
    bases)."""
    if len(studies) < 2:
        return []
    out = []
    for label, r, base in pipeline_rows(studies):
        if r == "0":
            continue
        ensemble = {d: across_pipelines(studies, r, base, f"{d}_distance") for d in ("argmax", "bayes", "frame_bayes")}
        if not ensemble["argmax"] or ensemble["argmax"]["n"] < 2:
            continue  # a round one pipeline holds: its own claim lines say it
        out.append(f"- Self-training over {ensemble['argmax']['n']} pipelines, round {label} vs round {base}: ensemble "
                   + "; ".join(f"{d} {_paired_text(p)}" for d, p in ensemble.items() if p)
                   + f"; members pooled over the pipelines, argmax "
                   f"{_paired_text(pooled_members(studies, r, base, 'argmax_distance'))}.")
    return out


def coarse_source(p: dict | None) -> str:
    """What a coarse round trained on: exact pseudo-labels and set targets (by rank), and how many are right."""
    if not p:
        return "?"
    ranks = ", ".join(f"{n} {rank}" for rank, n in (p.get("coarse_by_rank") or {}).items() if n)
    right = p.get("coarse_precision")
    return (f"train + {p['count']} exact ({p['accuracy']:.0%} right) + {p.get('coarse_count', 0)} coarse pseudo-labels "
            f"({ranks or 'none'}; {'-' if right is None else f'{right:.0%}'} with the truth under the taxon)")


def gates_table(acc: dict, round_: str = "1", rows: list | None = None) -> str:
    """Precision and mean distance of the pseudo-labels of every gate at equal coverage (round 0's ensemble),
    from round `round_`'s stats, or the given `rows` of `compare_gates`."""
    if rows is None:
        rows = (acc["pseudo_labels"].get(round_) or {}).get("gates_at_equal_coverage")
    if not rows:
        return "(no pseudo-labels yet)"
    gates = list(dict.fromkeys(r["gate"] for r in rows))
    coverages = sorted({r["target_coverage"] for r in rows})
    lines = ["| coverage | " + " | ".join(gates) + " |", "|---|" + "---|" * len(gates)]
    for c in coverages:
        cells = []
        for g in gates:
            row = next(r for r in rows if r["gate"] == g and r["target_coverage"] == c)
            cells.append("-" if row["precision"] is None else
                         f"{row['precision']:.3f} ({row['coverage']:.2f}, d {row['mean_distance']:.2f})")
        lines.append(f"| {c:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def coarse_table(acc: dict) -> str:
    c = acc.get("coarse")
    if not c:
        return "(not measured yet)"
    lines = ["| agreement of the members | share of test ROIs | right (truth under the agreed taxon) |", "|---|---|---|"]
    for rank in ("exact", "genus", "family", "order"):
        prec = c.get(f"{rank}_precision")
        lines.append(f"| {rank if rank != 'exact' else 'the concept'} | {c[f'{rank}_coverage']:.3f} | "
                     f"{'-' if prec is None else f'{prec:.3f}'} |")
    return "\n".join(lines)


def tta_table(studies: list[dict]) -> str:
    """Test-time views of round 0's members, per pipeline study: the members' mean and the ensemble's distances."""
    measured = [s for s in studies if s.get("tta")]
    if not measured:
        return "(not measured yet)"
    lines = ["| pipeline | test-time views (mean of their probabilities) | members: argmax distance | members: Bayes "
             "distance | ensemble: argmax distance | ensemble: Bayes distance | ensemble: argmax accuracy |",
             "|---|---|---|---|---|---|---|"]
    for study in measured:
        for views, e in study["tta"].items():
            m, en = e["members"], e["ensemble"]
            lines.append(f"| {pipeline_label(study)} | {views} | {m['argmax_distance']:.3f} | {m['bayes_distance']:.3f} | "
                         f"{en['argmax_distance']:.3f} | {en['bayes_distance']:.3f} | {en['argmax_accuracy']:.3f} |")
    return "\n".join(lines)


def tta_claims(studies: list[dict]) -> list[str]:
    """Each set of test-time views against the identity view alone, paired by pipeline (one pair per pipeline
    study: its members' mean and its ensemble), argmax and Bayes distance."""
    measured = [s["tta"] for s in studies if s.get("tta") and "identity" in s["tta"]]
    if not measured:
        return []

    def by_pipeline(views: str, part: str) -> dict:
        return {str(i): tta[views][part] for i, tta in enumerate(measured) if views in tta}

    out = []
    for views in [v for v in measured[0] if v != "identity"]:
        cells = [f"{part} {d} " + _paired_text(paired_runs(by_pipeline(views, part), by_pipeline("identity", part),
                                                           f"{d}_distance"))
                 for part in ("members", "ensemble") for d in ("argmax", "bayes")]
        out.append(f"- Test-time views {views} vs identity, round 0, paired by pipeline (members: their mean): "
                   f"{'; '.join(cells)}.")
    return out


def claims(acc: dict, pipelines: list[dict] = ()) -> str:
    """The questions' verdicts, paired by seed (see `paired`); self-training also over `pipelines` (more
    pipeline studies, `pipeline_claims`)."""
    def line(a, b, key, what):
        p = paired(acc, a, b, key)
        return f"- {what}: {_paired_text(p)}." if p else f"- {what}: not measured yet."

    out = ["Paired by seed; a difference holds when every seed agrees on its sign and the mean difference is more "
           "than twice its standard error, on at least 3 seeds (n = 3: a sign test alone could not do better than 1 in 4 "
           "by chance); fewer seeds give the difference without a verdict.",
           line("dwce_team", "ce", "argmax_distance", "DW-CE (team) vs CE, argmax distance"),
           line("dwce_team", "ce", "bayes_distance", "DW-CE (team) vs CE, Bayes distance"),
           line("dwce_team", "ce", "argmax_accuracy", "DW-CE (team) vs CE, argmax accuracy"),
           line("dwce_team", "ce", "argmax_distinct", "DW-CE (team) vs CE, distinct labels"),
           line("hxe_0.3", "ce", "argmax_distance", "HXE (alpha 0.3) vs CE, argmax distance"),
           line("hxe_0.3", "ce", "bayes_distance", "HXE (alpha 0.3) vs CE, Bayes distance"),
           line("hxe_0.3", "dwce_team", "argmax_distance", "HXE (alpha 0.3) vs DW-CE (team), argmax distance"),
           line("hxe_0.3", "dwce_team", "argmax_accuracy", "HXE (alpha 0.3) vs DW-CE (team), argmax accuracy")]
    for name, what in (("dwce_ctx3", "ROI + 3x context"), ("dwce_frame", "ROI + full frame"),
                       ("dwce_downscale", "down-scaling augmentation")):
        out += [line(name, "dwce_team", "argmax_distance", f"{what} vs ROI only (DW-CE), argmax distance"),
                line(name, "dwce_team", "bayes_distance", f"{what} vs ROI only (DW-CE), Bayes distance"),
                line(name, "dwce_team", "frame_bayes_distance", f"{what} vs ROI only (DW-CE), frame Bayes distance"),
                line(name, "dwce_team", "acc_q1", f"{what} vs ROI only (DW-CE), accuracy on the smallest quarter of boxes")]
    for name, entry in acc["single"].items():  # models with the average-K set head (run_metrics' set_gates)
        precision = {s: {f"{g['gate']} {g['target_coverage']}": g["precision"] for g in m["set_gates"]
                         if g["precision"] is not None} for s, m in entry["runs"].items() if m.get("set_gates")}
        if precision:
            cuts = [f"{c:.0%} {_paired_text(paired_runs(precision, precision, f'avgk_set_size {c}', f'max_prob {c}'))}"
                    for c in (0.3, 0.5, 0.7)]
            out.append(f"- Set-size gate of the average-K head vs max-probability of the same {entry['label']} "
                       f"models, pseudo-label precision at equal test coverage: {'; '.join(cuts)}.")
    for name, entry in acc["single"].items():
        out.append(f"- Decoders of single {entry['label']} models: Bayes vs argmax "
                   f"{_paired_text(paired(acc, name, name, 'bayes_distance', 'argmax_distance'))}; frame Bayes vs "
                   f"Bayes {_paired_text(paired(acc, name, name, 'frame_bayes_distance', 'bayes_distance'))}.")
    if subsets := acc.get("ensemble_subsets"):
        sizes = subsets["sizes"]
        seq = "; ".join(f"{k}: argmax {e['argmax']['mean']:.3f}, Bayes {e['bayes']['mean']:.3f}" for k, e in sizes.items())
        out.append(f"- Ensemble size (DW-CE, mean over every k-subset of the {subsets['members']} seeds; shared members, "
                   f"so no verdict): {seq}.")
    rounds = acc["ensemble_rounds"]
    if len(rounds) > 1:
        seq = ", ".join(f"round {r}: {e['argmax_distance']:.3f} / {e['bayes_distance']:.3f}" for r, e in rounds.items())
        out.append(f"- Self-training (ensemble argmax / Bayes distance per round, one pipeline seed): {seq}.")
        base = rounds["0"].get("member_runs", {}) if "0" in rounds else {}
        members = [f"round {r} {_paired_text(paired_runs(e.get('member_runs', {}), base, 'argmax_distance'))}"
                   for r, e in rounds.items() if r != "0" and base]
        if members:
            out.append(f"- Self-training, each round's members vs round 0's, paired by seed (argmax distance): "
                       f"{'; '.join(members)}.")
    exact = rounds.get("1")
    for section, what in (("coarse_round_1", "Coarse vs exact pseudo-labels"),
                          ("scratch_round_1", "From-scratch vs warm-started members on the same pseudo-labels")):
        out += side_round_claims(acc.get(section), exact, what)
    out += pipeline_claims([acc, *pipelines])
    out += tta_claims([acc, *pipelines])
    scratch, base = acc.get("scratch_round_1"), rounds.get("0")
    if scratch and base:
        out.append("- The pseudo-labels' own effect (from-scratch round 1 vs round 0, the same recipe and epochs), "
                   "members paired by seed: " + "; ".join(member_pairs(scratch, base)) + ".")
    if acc.get("ledger_only"):
        out.append(f"- Kept from the ledger (bench/accuracy_ledger.json: measured in an earlier checkout, run folders "
                   f"not here): {', '.join(acc['ledger_only'])}.")
    return "\n".join(out)


def member_pairs(a: dict, b: dict) -> list[str]:
    """Paired-by-seed differences of two rounds' members (their `member_runs`): argmax and Bayes distance,
    argmax accuracy."""
    return [f"{what} {_paired_text(paired_runs(a.get('member_runs', {}), b.get('member_runs', {}), key))}"
            for what, key in (("argmax distance", "argmax_distance"), ("Bayes distance", "bayes_distance"),
                              ("argmax accuracy", "argmax_accuracy"))]


def side_round_claims(side: dict | None, exact: dict | None, what: str) -> list[str]:
    """Claim lines of an alternative round 1 (coarse pseudo-labels, members from scratch) against the pipeline's
    round 1 from the same round 0: the ensembles' distances (one pipeline seed: no verdict) and the members'."""
    if not (side and exact):
        return []
    diff = ", ".join(f"{d} {side[f'{d}_distance'] - exact[f'{d}_distance']:+.3f}"
                     for d in ("argmax", "bayes", "frame_bayes") if f"{d}_distance" in side and f"{d}_distance" in exact)
    return [f"- {what}, round 1 from the same round 0 (ensemble distance, difference; one pipeline seed, so no "
            f"verdict): {diff}.", f"- {what}, round 1's members paired by seed: {'; '.join(member_pairs(side, exact))}."]


def accuracy_plot(acc: dict, path: Path, pipelines: list[dict] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4), gridspec_kw={"width_ratios": [2.2, 1, 1.2]})
    names = list(acc["single"])
    x = np.arange(len(names))
    for offset, key, label in ((-0.2, "argmax_distance", "argmax"), (0.2, "bayes_distance", "Bayes")):
        values = [[r[key] for r in acc["single"][n]["runs"].values()] for n in names]
        axes[0].bar(x + offset, [np.mean(v) for v in values], 0.4,
                    yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in values], label=label, capsize=3)
    axes[0].set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    axes[0].set_ylabel("mean hierarchical distance (test)")
    axes[0].set_title("single models (mean +- std over seeds)")
    axes[0].legend()
    styles = ("-", "--", ":", "-.")  # one per pipeline study (the first four)
    for n, (study, style) in enumerate(zip([acc, *pipelines], styles)):
        rounds = study["ensemble_rounds"]
        r = [int(k) for k in rounds]
        for color, key in enumerate(("argmax", "vote", "bayes", "frame_bayes")):
            if r and all(f"{key}_distance" in rounds[str(i)] for i in r):
                axes[1].plot(r, [rounds[str(i)][f"{key}_distance"] for i in r], style, marker="o", color=f"C{color}",
                             label=key if n == 0 else None)
        if pipelines:
            axes[1].plot([], [], style, color="k", label=f"pipeline {n + 1}")  # a legend entry for the line style
    if acc["ensemble_rounds"]:
        axes[1].set_xticks(sorted({int(k) for s in [acc, *pipelines] for k in s["ensemble_rounds"]}))
        axes[1].set_xlabel("self-training round")
        axes[1].set_title("ensemble (DW-CE team)" + (", per pipeline" if pipelines else ""))
        axes[1].legend(fontsize=8)
    rows = (acc["pseudo_labels"].get("1") or {}).get("gates_at_equal_coverage") or []
    for gate in dict.fromkeys(r["gate"] for r in rows):
        curve = [r for r in rows if r["gate"] == gate and r["precision"] is not None]
        axes[2].plot([r["coverage"] for r in curve], [r["precision"] for r in curve], marker=".", label=gate)
    if rows:
        axes[2].plot([0.56], [0.85], "s", color="tab:red", label="real: 5/5 of 5 seeds (3rd place)")
        axes[2].set_xlabel("coverage of the test ROIs")
        axes[2].set_ylabel("pseudo-label precision")
        axes[2].set_title("gates on round 0's ensemble")
        axes[2].legend(fontsize=7)
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
    plan = Plan(root=Path(acc["root"]), out=accuracy_dir, seeds=acc["seeds"], epochs=acc["epochs"], rounds=acc["rounds"],
                min_votes=acc["min_votes"], train_config=acc["train_config"], recipe_overrides=acc["recipe_overrides"],
                u_threshold=acc.get("u_threshold", 0.0), warm_epochs=acc.get("warm_epochs", 5),
                ensemble_seeds=acc.get("ensemble_seeds", []), variant_seeds=acc.get("variant_seeds"),
                ledger=Path(acc["ledger"]) if acc.get("ledger") else None)
    return collect(plan)


def accuracy_markdown(acc: dict, command: str, pipelines: list[dict] = ()) -> str:
    """The accuracy section; `pipelines`: more studies of the same benchmark, each one more self-training
    pipeline with its own member seeds (`--pipeline-dirs`)."""
    recipe = json.dumps(acc["recipe"])
    return "\n".join([
        f"Benchmark: `{acc['root']}` (generator v{acc.get('generator_version', '?')}: the generated `bench` preset, "
        f"{acc['test_rois']} test ROIs; the "
        "reference recipe errs there like real competition models on the real test: bench/REALISM.md). "
        f"Command: `{command}`.",
        f"Recipe for every model: `{acc['train_config']}` + `{recipe}`; variants change only the keys named in their "
        f"row (`overrides` in accuracy.json). Seed s sets the weights and batches of run s in every variant; every "
        "run holds out the same frame-grouped validation split (split seed 0). Mean hierarchical distance: 0 best, "
        "12 worst; accuracy = exact concept; distinct labels: of the 79, on the 788 test ROIs.",
        "", "### 1. Losses, 5. context, 6. down-scaling, seed options: single models", "", single_table(acc),
        "", "Accuracy by quarter of the test box long side:", "", size_table(acc),
        "", "### 4. Ensembles and decoders (test distance / accuracy / distinct labels)", "", ensemble_size_table(acc),
        "", "Test-time augmentation on round 0's members (`src.predict --tta`), per pipeline:", "",
        tta_table([acc, *pipelines]),
        "", f"### 2. Self-training (warm-started rounds of {acc.get('warm_epochs')} epochs; pseudo-labels: >= "
            f"{acc['min_votes']} of {len(acc['seeds'])} members agree, ensemble U >= {acc.get('u_threshold', 0)})",
        "", rounds_table(acc),
        "", f"The same rounds over {1 + len(pipelines)} independent pipelines (each its own member seeds; argmax / Bayes "
            "/ frame Bayes ensemble distance):", "", pipelines_table([acc, *pipelines]),
        "", "Their pseudo-labels per round:", "", pipeline_pseudo_table([acc, *pipelines]),
        "", "Pseudo-label gates on round 0's ensemble at equal coverage: precision (coverage reached, mean distance "
            "of the accepted ROIs):", "", gates_table(acc),
        "", "The same gates on the members' frame-aware distributions (`pseudo.frame_aware: true`):", "",
        gates_table(acc, rows=acc.get("frame_aware_gates") or []),
        "", "### 3. Coarse pseudo-labels (round 0's members; the round trained on them is row `1, coarse` of section 2)", "", coarse_table(acc),
        "", "![accuracy](results_accuracy.png)",
    ])


def limits(pipelines: int) -> str:
    """What the benchmark can and cannot support, for a study of `pipelines` self-training pipelines."""
    if pipelines == 1:
        runs = "one run (one set of members per round)"
    elif pipelines < 3:
        runs = f"{pipelines} runs (each its own set of members per round): fewer than 3, so no verdict over pipelines"
    else:
        runs = f"{pipelines} runs (each its own set of members per round)"
    return LIMITS + f"; the self-training pipeline is {runs}."


LIMITS = """What this benchmark can and cannot support:
- It is a **generated** benchmark, calibrated so that a plain reference model errs on its shifted test as
  real competition models err on the real test (bench/REALISM.md); the models are small CPU models (WRN-10-2
  at 32 px, 20 epochs) trained from scratch.
- It does **not** support claims about the leaderboard, the team's WRN-101-2 at 112 px with ImageNet weights,
  or the size of the gains the competition teams reported: magnitudes can differ on real images.
- Three seeds detect differences of a few standard deviations of the seed noise only"""


SPEED_HEADING = "## Speed (this machine; every ratio against a reference measured in the same run)"
ACCURACY_HEADING = "## Accuracy on the generated benchmark"


def kept_speed_section(path: Path) -> str | None:
    """The speed section of an earlier RESULTS.md (its body, between the speed and accuracy headings), with
    a line naming the run that measured it; None when the file has none."""
    if not path.is_file():
        return None
    text = path.read_text()
    if SPEED_HEADING not in text or ACCURACY_HEADING not in text:
        return None
    body = text.split(SPEED_HEADING, 1)[1].split(ACCURACY_HEADING, 1)[0].strip()
    written = next((line for line in text.splitlines() if line.startswith("Written by")), "")
    origin = written.split("` on ", 1)[-1].split(";")[0] if "` on " in written else "in an earlier run"
    kept = "" if body.startswith("Kept from") else f"Kept from the previous RESULTS.md (speed measured {origin}).\n\n"
    return kept + body


def write_report(out: Path, speed: dict | None, acc: dict | None, command: str, machine: dict,
                 accuracy_command: str, note: str = "", speed_text: str | None = None,
                 pipelines: list[dict] = ()) -> str:
    """RESULTS.md text (also written to `out`) and the plot beside it. `speed_text`: a kept speed section
    (`kept_speed_section`), used when `speed` is None; `pipelines`: more pipeline studies (`accuracy_markdown`)."""
    parts = ["# Benchmark results", "",
             f"Written by `{command}` on {machine['date_utc']}; machine: {machine['cpu']}, {machine['cores']} cores, "
             f"torch {machine.get('torch')}, Python {machine['python']}; git commit `{machine['git_commit']}`.",
             "Packages (a seed reproduces a run exactly only on the same CPU model and package versions): "
             + ", ".join(f"{name} {v}" for name, v in (machine.get("packages") or {}).items()) + ".", ""]
    parts += [SPEED_HEADING, ""]
    if speed:
        if speed.get("command"):
            parts += [f"Speed figures measured by `{speed['command']}`.", ""]
        parts += [f"Load average (1, 5, 15 min) at the start of the speed run: "
                  f"{', '.join(f'{x:.2f}' for x in speed['load_average_start'])}; at the end: "
                  f"{', '.join(f'{x:.2f}' for x in speed['load_average_end'])}"
                  + (" (quick settings)" if speed.get("quick") else "") + ". " + note, "", speed_markdown(speed), ""]
    elif speed_text:
        parts += [speed_text, ""]
    else:
        parts += ["(speed benches not run)", ""]
    parts += [ACCURACY_HEADING, ""]
    if acc and acc["single"]:
        accuracy_plot(acc, out.parent / "results_accuracy.png", pipelines)
        parts += [accuracy_markdown(acc, accuracy_command, pipelines), "", "### Claims", "", claims(acc, pipelines), "",
                  limits(1 + len(pipelines)), ""]
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
    parser.add_argument("--keep-speed", action="store_true",
                        help="do not measure speed: keep the speed section of the existing --out file as it is")
    parser.add_argument("--redo-workers", action="store_true",
                        help="with --speed-from: measure the DataLoader-worker scaling again and save it")
    parser.add_argument("--note", default="", help="a sentence about the measurement conditions, put in RESULTS.md")
    parser.add_argument("--speed-json", type=Path, default=Path("outputs/bench/speed.json"), help="save speed results here")
    parser.add_argument("--accuracy-dir", type=Path, default=Path("outputs/bench/accuracy"),
                        help="OUT folder of `python -m bench.accuracy`")
    parser.add_argument("--pipeline-dirs", type=Path, nargs="*", default=[], metavar="DIR",
                        help="OUT folders of more `bench.accuracy` runs, each one more self-training pipeline with its "
                             "own --seeds: the rounds are compared over the pipelines, paired by pipeline")
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.report", *(argv if argv is not None else sys.argv[1:])])
    acc = load_accuracy(args.accuracy_dir)
    pipelines = []
    for folder in args.pipeline_dirs:
        if (study := load_accuracy(folder)) is None:
            parser.error(f"--pipeline-dirs {folder}: no accuracy.json there (run `python -m bench.accuracy --out {folder}`)")
        pipelines.append(study)
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
    elif not (args.no_speed or args.keep_speed):
        with tempfile.TemporaryDirectory() as tmp:
            speed = run_speed(args.quick, acc["root"] if acc else None, Path(tmp))
        speed["command"] = command
        atomic_write_json(args.speed_json, speed)
    commands = [f for folder in [args.accuracy_dir, *args.pipeline_dirs] for f in sorted(folder.glob("command_*.txt"))]
    accuracy_command = " ; ".join(f.read_text().strip() for f in commands) or "python -m bench.accuracy"
    if speed:
        for row in speed_rows(speed):
            print(format_speed_row(row))
    speed_text = kept_speed_section(args.out) if args.keep_speed and speed is None else None
    write_report(args.out, speed, acc, command.strip(), machine_info(), accuracy_command, args.note, speed_text,
                 pipelines)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
