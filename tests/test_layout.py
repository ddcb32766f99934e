"""The repository's layout, checked mechanically: every top-level module of training/ is
a command, imports within training/ form no cycle, no function is longer than 80 lines,
and AUROC is computed in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ROOT / "training"
MAX_FUNCTION_LINES = 80
AUROC_MODULE = TRAINING / "metrics" / "auroc.py"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never run, so no cycle)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skipped.update(id(child) for child in ast.walk(node))
    return skipped


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The training modules ``path`` imports, at module level or inside functions
    (``from training import x`` counts as importing ``training.x``)."""
    tree = _tree(path)
    skipped = _type_checking_blocks(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def test_every_top_level_module_of_training_is_a_command():
    for path in sorted(TRAINING.glob("*.py")):
        if path.name == "__init__.py":
            continue
        functions = {node.name: node for node in _tree(path).body if isinstance(node, ast.FunctionDef)}
        assert "main" in functions, f"expected {path.name} to be a command with main(argv=None) -> int"
        main = functions["main"]
        assert [a.arg for a in main.args.args] == ["argv"], f"expected {path.name}: main(argv)"
        assert main.args.defaults and getattr(main.args.defaults[0], "value", 0) is None, (
            f"expected {path.name}: main(argv=None)")
        assert ast.unparse(main.returns) == "int", f"expected {path.name}: main(...) -> int"


def test_the_package_docstring_lists_every_command_in_pipeline_order():
    doc = ast.get_docstring(_tree(TRAINING / "__init__.py"))
    commands = sorted(p.stem for p in TRAINING.glob("*.py") if p.name != "__init__.py")
    missing = [name for name in commands if f"``{name}``" not in doc]
    assert not missing, f"expected training/__init__.py to name every command, missing {missing}"
    order = ["split", "cache", "tune", "train", "crossval", "calibrate", "evaluate", "bundle",
             "examples", "publish"]
    positions = [doc.index(f"``{name}``") for name in order]
    assert positions == sorted(positions), f"expected the pipeline order {order}"


def test_no_import_cycle_within_training():
    paths = {_module_name(p): p for p in TRAINING.rglob("*.py")}
    graph = {name: _imports(path, set(paths)) - {name} for name, path in paths.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                cycle = trail[trail.index(other):] + [other]
                pytest.fail(f"expected no import cycle, found {' -> '.join(cycle)}")
            if other not in state:
                visit(other, [*trail, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def _long_functions(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("folder", ["training", "benchmarks", "xray_app"])
def test_no_function_is_longer_than_80_lines(folder):
    too_long = _long_functions(ROOT / folder)
    assert not too_long, f"expected every function within {MAX_FUNCTION_LINES} lines: {too_long}"


def test_auroc_is_computed_in_one_module():
    offenders = []
    for path in sorted([*TRAINING.rglob("*.py"), *(ROOT / "xray_app").rglob("*.py"),
                        *(ROOT / "benchmarks").rglob("*.py")]):
        if path == AUROC_MODULE:
            continue
        text = path.read_text()
        if "roc_auc_score" in text or "roc_curve" in text:
            offenders.append(f"{path.relative_to(ROOT)} uses scikit-learn's ROC")
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef) and node.name in {"auroc", "auc", "roc_auc"}:
                offenders.append(f"{path.relative_to(ROOT)} defines {node.name}()")
    assert not offenders, f"expected AUROC only in {AUROC_MODULE.relative_to(ROOT)}: {offenders}"
    assert "sklearn" not in AUROC_MODULE.read_text().replace("scikit-learn", ""), (
        "expected the one AUROC to be numpy alone")
