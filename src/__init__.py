"""FathomNet 2025 hierarchical classification.

Importing the package (every entry point: main.py, python -m src.stages..., the bench) sets
OMP_WAIT_POLICY=PASSIVE unless the environment already sets it (an empty value keeps OpenMP's own default).
PyTorch's OpenMP threads then sleep instead of spinning while they wait for each other: on a 2-core machine
shared with other processes the training step with 2 threads ran 2.8x faster (55-64 -> 125-255 img/s,
alternating processes, load 5-7; bench/results_cpu.md), the numbers are unchanged. It must be set before torch
is first imported, hence here."""
import os

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
