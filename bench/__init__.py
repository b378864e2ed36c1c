"""Benchmarks and studies (`python -m bench.NAME`).

Importing `src` here, before any benchmark imports torch, applies src/__init__.py's OMP_WAIT_POLICY setting
to every benchmark."""
import src  # noqa: F401
