"""The package layout: no import cycles, imports only down the layers, no generic top-level names, small modules,
one task registry."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the name it is installed under (setup.py)
PACKAGES = {"distillkit": "distillkit", "flows": "distillkit_flows", "storage_schemas": "distillkit_schemas"}
MAX_LINES = 420
# Bottom first. A module imports its own layer and those below, never one above: DESIGN's flows -> distillkit ->
# storage_schemas, and the README's "networks live apart from training" (students sit below training). The units are
# distillkit's top-level modules and packages ("distillkit" alone: the package root, its __version__) and the two
# other installed packages; a new unit must be given a layer here.
LAYERS = (
    {"distillkit_schemas"},
    {"distillkit", "config", "devices", "demo_data", "geometry", "images", "progress", "store", "students"},
    {"sources", "teachers"},
    {"scenes"},
    {"features", "cache", "training"},
    {"bench", "repair", "stores"},
    {"cli"},
    {"distillkit_flows"},
)


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, name in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = [name, *f.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(project modules that `mod` imports anywhere, function bodies included; raw names of every import)."""
    base = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out, raw = set(), []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                pkg = ".".join(parts[:len(parts) - node.level + 1]) + (f".{node.module}" if node.module else "")
            else:
                pkg = node.module
            targets = [f"{pkg}.{a.name}" if f"{pkg}.{a.name}" in mods else pkg for a in node.names]
        else:
            continue
        raw += targets
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != mod:
                out.add(t)
    return out, raw


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(m, p, mods)[0] for m, p in mods.items()}
    cycles, state, stack = [], {}, []

    def visit(m):  # depth-first search; a back edge closes a cycle
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_graph_walk_sees_a_cycle(tmp_path):
    """The walk itself can fail: two modules importing each other (one lazily, inside a function) are found."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    mods = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert _imports("a", mods["a"], mods)[0] == {"b"} and _imports("b", mods["b"], mods)[0] == {"a"}


def _unit(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if parts[0] == "distillkit" and len(parts) > 1 else parts[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """`module -> imported module` for every import into a higher layer than the importer's."""
    level = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    return [f"{m} -> {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
            if level[_unit(t)] > level[_unit(m)]]


def test_imports_point_down_the_layers():
    mods = _modules()
    unplaced = sorted({_unit(m) for m in mods} - set().union(*LAYERS))
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"
    up = _upward({m: _imports(m, p, mods)[0] for m, p in mods.items()})
    assert not up, "imports pointing up a layer:\n" + "\n".join(up)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself can fail: a student reaching into training, even lazily inside a function, is reported."""
    (tmp_path / "reach.py").write_text("def f():\n    from distillkit.training.dune.config import TrainConfig\n")
    mods = {**_modules(), "distillkit.students.reach": tmp_path / "reach.py"}
    graph = {"distillkit.students.reach": _imports("distillkit.students.reach", tmp_path / "reach.py", mods)[0]}
    assert _upward(graph) == ["distillkit.students.reach -> distillkit.training.dune.config"]


def test_folders_are_imported_by_their_installed_names():
    """`import flows` / `import storage_schemas` only work from the repo root, never once installed."""
    mods = _modules()
    tests = {f"tests.{f.stem}": f for f in (ROOT / "tests").glob("*.py")}
    bad = [f"{m}: {t}" for m, p in {**mods, **tests}.items() for t in _imports(m, p, {**mods, **tests})[1]
           if t.split(".")[0] in ("flows", "storage_schemas")]
    assert not bad, bad


def test_no_module_is_too_long():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


@pytest.mark.slow
def test_wheel_installs_only_project_names(tmp_path):
    """A built wheel holds distillkit, distillkit_flows and distillkit_schemas, and nothing generic such as `flows`."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("distillkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == set(PACKAGES.values())
    for folder, name in PACKAGES.items():  # every module of each folder is in the wheel
        want = {f"{name}/{f.relative_to(ROOT / folder).as_posix()}" for f in (ROOT / folder).rglob("*.py")}
        assert want <= set(names), sorted(want - set(names))[:5]


def test_train_options_come_from_the_task_registry():
    """A task is its package and one registry entry: its options are `distillkit train` options, its task module has
    every plug, and the CLI, the train-student flow and the shared training modules name no task."""
    from distillkit.cli.train import train
    from distillkit.training.tasks import TASKS, TaskModule

    params = set(inspect.signature(train).parameters)
    plugs = {n for n in vars(TaskModule) if not n.startswith("_")}
    for task in TASKS.values():
        assert set(task.options) <= params, f"{task.name}: options without a CLI option"
        assert not {n for n in plugs if not callable(getattr(task.plugs(), n, None))}, f"{task.name}: plugs missing"
    for path in ("distillkit/cli/train.py", "flows/train_student.py", "distillkit/training/checkpoint.py",
                 "distillkit/training/run.py"):
        named = [n.value for n in ast.walk(ast.parse((ROOT / path).read_text()))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in TASKS]
        assert not named, f"{path} names the tasks {named}: look them up in distillkit.training.tasks"


def test_readme_layout_names_every_package_and_task_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    words = set(__import__("re").findall(r"[A-Za-z_][\w.]*", layout))
    pkg = ROOT / "distillkit"
    want = {d.name for d in pkg.rglob("*") if d.is_dir() and (d / "__init__.py").exists()}
    want |= {f.name for f in pkg.glob("*.py") if f.stem != "__init__"}
    for task in (pkg / "training").iterdir():  # each task package's modules
        if (task / "__init__.py").exists():
            want |= {f.stem for f in task.glob("*.py") if f.stem != "__init__"}
    missing = sorted(n for n in want if n not in words and f"{n}/" not in layout)
    assert not missing, f"README Layout does not mention {missing}"
