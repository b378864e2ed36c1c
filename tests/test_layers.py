"""The layers of `src`: the import graph of every module (top-level and function-level imports alike) has no
cycle, the library sits below the stages and the training loop, and training does not import the CLI."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["src/ensemble.py", "src/frames.py", "src/decoding.py", "src/forward.py", "src/inference.py",
           "src/run_files.py", "src/predict.py", "src/score.py", "src/manifest.py"]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The modules of `modules` that the file imports anywhere (module level or inside functions); `from P
    import name` counts as importing P.name when that is a module, else P."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the src modules it imports, over every .py file under src/ (subpackages included)."""
    files = sorted((root / "src").rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): imported_modules(f, modules, root) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a] of the graph, or None when it is acyclic (iterative DFS, three colours)."""
    colour, parent = {}, {}
    for start in sorted(graph):
        if start in colour:
            continue
        colour[start] = "grey"
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = "black"
                stack.pop()
            elif colour.get(child) == "grey":  # back edge: the cycle is child -> ... -> node -> child
                cycle = [node]
                while cycle[-1] != child:
                    cycle.append(parent[cycle[-1]])
                return [child, *reversed(cycle[:-1]), child]
            elif child not in colour:
                colour[child], parent[child] = "grey", node
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_cycle_detector_on_small_graphs():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    assert find_cycle({}) is None


def test_import_graph_reads_function_level_and_relative_imports(tmp_path):
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "__init__.py").write_text("")
    (tmp_path / "src" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "src" / "a.py").write_text("def f():\n    from src.pkg import b\n")
    (tmp_path / "src" / "pkg" / "b.py").write_text("from . import c\nimport numpy\n")
    (tmp_path / "src" / "pkg" / "c.py").write_text("import src.a\n")
    graph = import_graph(tmp_path)
    assert graph["src.a"] == {"src.pkg.b"} and graph["src.pkg.b"] == {"src.pkg.c"} and graph["src.pkg.c"] == {"src.a"}
    assert find_cycle(graph) == ["src.a", "src.pkg.b", "src.pkg.c", "src.a"]


def test_src_import_graph_is_acyclic():
    graph = import_graph()
    assert {"src.decoding", "src.ensemble", "src.frames", "src.stages.cli", "src.synthetic.generator"} <= set(graph)
    assert "src.frames" in graph["src.decoding"] and "src.ensemble" in graph["src.decoding"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_pure_math_sits_below_decoding():
    graph = import_graph()
    assert not graph["src.ensemble"] - {"src.taxonomy"}
    assert graph["src.frames"] <= {"src.ensemble"}


def test_training_does_not_import_the_cli():
    graph = import_graph()
    training = {m for m in graph if m == "src.train" or m.startswith(("src.data", "src.models"))}
    assert not {m for m in training if "src.predict" in graph[m]}


@pytest.mark.parametrize("module", LIBRARY)
def test_the_library_imports_no_application_layer(module):
    """Inference and ensemble code sit below the stages and the training loop (imports anywhere in the file)."""
    tree = ast.parse((ROOT / module).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m and (m == "src.train" or m.startswith("src.stages"))}
