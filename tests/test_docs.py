"""The documentation stays true: every relative link in README.md, CHANGELOG.md and docs/*.md resolves (file and,
for Markdown targets, heading anchor), and every command it shows names an entry point that exists, answers
`--help` with exit code 0 and accepts the options shown."""
import json
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# a command: python / python3 / .venv/bin/python, then `-m MODULE` or `main.py`
COMMAND = re.compile(r"(?:^|&&|\s|`)(?:\.venv/bin/)?python3? +(?:-m +([\w.]+)|(main\.py))")
INLINE = re.compile(r"`((?:\.venv/bin/)?python3? [^`]+)`")
PROJECT_PACKAGES = ("src", "bench")


def headings(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (outside code blocks)."""
    anchors, seen = set(), {}
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_pages_exist():
    names = {p.name for p in PAGES}
    for name in ("data.md", "training.md", "pipeline.md", "kaggle.md", "benchmark.md", "reliability.md",
                 "benchmarks.md", "method.md"):
        assert name in names, name


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    problems = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in headings(file):
            problems.append(f"{target}: no heading with anchor #{anchor}")
    assert not problems, f"{page.name}: " + "; ".join(problems)


def code_blocks(page: Path) -> list[str]:
    """The fenced blocks and the inline code spans that hold a command."""
    text = page.read_text()
    return FENCE.findall(text) + INLINE.findall(FENCE.sub("", text))


def documented_commands() -> dict[str, set[str]]:
    """Entry point -> the options shown with it, from every command in the pages' code blocks and prose."""
    found: dict[str, set[str]] = {}
    for page in PAGES:
        text = page.read_text()
        blocks = "\n".join(code_blocks(page))
        for m in COMMAND.finditer(text):
            entry = m.group(1) or m.group(2)
            if entry.endswith(".") or (entry != "main.py" and entry.split(".")[0] not in PROJECT_PACKAGES):
                continue  # pytest, venv, pip; or a pattern such as `src.stages.<stage>`
            found.setdefault(entry, set())
        for line in blocks.splitlines():  # options shown in code must be accepted
            for part in line.split("&&"):
                m = COMMAND.search(part)
                if not m or (m.group(1) or m.group(2)) not in found:
                    continue
                words = shlex.split(part.split(" #")[0].replace("[", " ").replace("]", " "))
                found[m.group(1) or m.group(2)].update(w.split("=")[0] for w in words if w.startswith("--"))
    return found


# Runs each entry point as `python -m MODULE --help` would (runpy, run_name "__main__"), all in one child process so
# that torch is imported once: a subprocess per entry point took minutes on a loaded 2-core machine.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for entry in sys.argv[1:]:
    out = io.StringIO()
    sys.argv = [entry, "--help"]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if entry.endswith(".py"):
                runpy.run_path(entry, run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__", alter_sys=True)
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        except BaseException:
            code, _ = 1, traceback.print_exc(file=out)
    results[entry] = [code, out.getvalue()]
print(json.dumps(results))
"""


@lru_cache(maxsize=1)
def help_texts() -> dict[str, tuple[int, str]]:
    """`--help` of every documented entry point: exit code and text."""
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, *sorted(documented_commands())], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr[-2000:]
    return {entry: (code, text) for entry, (code, text) in json.loads(done.stdout.splitlines()[-1]).items()}


def test_documented_commands_are_found():
    commands = documented_commands()
    for entry in ("main.py", "src.stages.pipeline", "src.stages.submit", "src.stages.package", "src.predict",
                  "src.score", "src.data.fetch", "src.data.download", "src.synthetic", "bench.report"):
        assert entry in commands, entry


def test_documented_commands_answer_help_and_accept_their_options():
    problems = []
    for entry, options in documented_commands().items():
        code, text = help_texts()[entry]
        if code != 0:
            problems.append(f"{entry} --help: exit code {code}: {text.strip().splitlines()[-1:]}")
            continue
        problems += [f"{entry}: option {o} not in its --help" for o in sorted(options) if o not in text]
    assert not problems, "\n".join(problems)


def test_readme_quick_start_and_ci_agree():
    readme = (REPO / "README.md").read_text()
    demo = ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && "
            ".venv/bin/python -m src.stages.pipeline cfg/pipeline_demo.yaml")
    tests = ("python3 -m venv .venv && .venv/bin/pip install -r requirements-dev.txt && "
             ".venv/bin/python -m pytest -q tests")
    assert demo in readme and tests in readme
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -r requirements-dev.txt" in ci and "-m pytest -q -p no:cacheprovider tests" in ci
    assert "ruff check ." in ci
    dev = (REPO / "requirements-dev.txt").read_text().splitlines()
    assert dev[[not line.startswith("#") for line in dev].index(True)] == "-r requirements.txt"
    runtime = (REPO / "requirements.txt").read_text()
    for package in ("pytest", "nbclient", "ruff"):  # dev-only packages stay out of the runtime requirements
        assert not re.search(rf"^{package}\b", runtime, re.M), package


def test_pipeline_size_in_readme_matches_the_config():
    """The README says what cfg/pipeline_wrn_dwce.yaml trains: seeds x (rounds + 1) trainings."""
    import yaml

    cfg = yaml.safe_load((REPO / "cfg" / "pipeline_wrn_dwce.yaml").read_text())
    train = yaml.safe_load((REPO / cfg["train_config"]).read_text())
    seeds, trainings = len(cfg["seeds"]), cfg["rounds"] + 1
    readme = (REPO / "README.md").read_text()
    assert f"{seeds} seeds x {trainings} trainings" in readme
    assert f"**{seeds * trainings} trainings**" in readme
    assert f"{train['train']['epochs']} epochs each" in readme
