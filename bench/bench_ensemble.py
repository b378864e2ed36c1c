"""Ensemble math on saved arrays at the team's real size: 8 members x 100 heads x 788 test ROIs x 79 classes.

    python -m bench.bench_ensemble [--members 8] [--heads 100] [--rois 788]

Times (best of 3) each step the pseudo_label and submit stages run on the members' test_probs.npz.
"""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from bench.common import timed
from src.ensemble import (
    apply_temperature,
    decode_bayes,
    diffuse,
    diffusion_operator,
    fit_temperature,
    gmu,
    member_labels_and_u,
    taxonomy_graph,
    vote,
)
from src.taxonomy import distance_matrix, load_taxonomy


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--heads", type=int, default=100)
    parser.add_argument("--rois", type=int, default=788)
    args = parser.parse_args(argv)
    taxonomy = load_taxonomy()
    C, D = len(taxonomy), distance_matrix(taxonomy)
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.full(C, 0.05), size=(args.heads, args.rois)).astype(np.float32)
               for _ in range(args.members)]
    means = np.stack([m.mean(axis=0) for m in members])
    mean = means.mean(axis=0)
    labels = rng.integers(0, C, args.rois)
    graph = taxonomy_graph(taxonomy)
    steps = {
        "member labels + U (GMU over heads, all members)": lambda: member_labels_and_u(members),
        "ensemble U (GMU over member means)": lambda: gmu(means),
        "vote with U tie-break": lambda: vote(*member_labels_and_u(members), num_classes=C),
        "Bayes decoding": lambda: decode_bayes(mean, D),
        "temperature fit (NLL, bounded search)": lambda: fit_temperature(mean, labels),
        "temperature apply + Bayes": lambda: decode_bayes(apply_temperature(mean, 1.5), D),
        "diffusion operator (266 x 266 inverse)": lambda: diffusion_operator(graph, 0.3),
        "diffusion decode": lambda: diffuse(mean, graph, 0.3).argmax(axis=1),
    }
    results = {}
    print(f"{args.members} members x {args.heads} heads x {args.rois} ROIs x {C} classes")
    for name, fn in steps.items():
        _, seconds = timed(fn, repeats=3)
        results[name] = seconds
        print(f"  {name:<50} {seconds * 1000:9.1f} ms")

    def post_process():  # what pseudo_label + submit run per round: GMU per member and ensemble, vote, Bayes
        labels, u = member_labels_and_u(members)
        return vote(labels, u, num_classes=C), gmu(means), decode_bayes(mean, D)

    _, seconds = timed(post_process, repeats=3)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: the peak of the arrays this step allocates
    post_process()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    results["total GMU + vote + Bayes"] = seconds
    results["total_peak_bytes"] = peak
    inputs = sum(m.nbytes for m in members)
    results["input_bytes"] = inputs
    print(f"  {'total GMU + vote + Bayes':<50} {seconds * 1000:9.1f} ms, peak {peak / 2**20:.0f} MiB allocated "
          f"(inputs {inputs / 2**20:.0f} MiB)")
    return results


if __name__ == "__main__":
    main()
