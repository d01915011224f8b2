"""The project's layout rules, checked on the source: imports between the top-level modules
point one way (no circle, function-level imports included), no module keeps mutable state, and
functions stay short enough to read."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODULES = {path.stem: path for path in ROOT.glob("*.py")}
# A function's body (its docstring left out) may be this long: "about 40 lines" with a margin.
LONGEST_FUNCTION = 45


def imported_modules(path):
    """The top-level project modules that `path` imports anywhere (module or function level)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return {name for name in found if name in MODULES and name != path.stem}


def find_circle(graph):
    """One import circle of `graph` ({module: set of modules}) as a list, or None."""
    state = {}  # module -> "open" while on the current path, "done" once fully explored

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                circle = visit(target, path + [target])
                if circle:
                    return circle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            circle = visit(module, [module])
            if circle:
                return circle
    return None


def test_find_circle_finds_a_planted_circle_and_accepts_a_tree():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_among_the_top_level_modules():
    graph = {name: imported_modules(path) for name, path in MODULES.items()}
    assert {"config", "dataset", "data_generator", "tf_pipeline", "parsing"} <= set(graph)
    # The arrows the issue named: the tf.data assembly feeds on both, neither on it.
    assert "tf_pipeline" in graph["dataset"] and "data_generator" in graph["tf_pipeline"]
    assert "tf_pipeline" not in graph["data_generator"]
    assert find_circle(graph) is None, " -> ".join(find_circle(graph))


def mutable_module_state(path):
    """Names bound at module level to a mutable container or cache (dict/list/set literals,
    their constructors, weak dictionaries), other than UPPER_CASE constants."""
    found = []
    constructors = {"dict", "list", "set", "defaultdict", "WeakKeyDictionary",
                    "WeakValueDictionary", "OrderedDict", "Counter"}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not isinstance(node, ast.Assign):
            continue
        value = node.value
        mutable = isinstance(value, (ast.Dict, ast.List, ast.Set)) or (
            isinstance(value, ast.Call) and getattr(value.func, "attr",
                                                    getattr(value.func, "id", "")) in constructors)
        for target in node.targets:
            if mutable and isinstance(target, ast.Name) and not target.id.isupper():
                found.append(f"{path.name}:{node.lineno} {target.id}")
    return found


def test_no_module_keeps_mutable_state():
    found = [entry for path in MODULES.values() for entry in mutable_module_state(path)]
    assert found == []


def long_functions(path):
    """'file:line name (n lines)' for each function whose body is over LONGEST_FUNCTION lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            has_docstring = (isinstance(body[0], ast.Expr)
                             and isinstance(body[0].value, ast.Constant)
                             and isinstance(body[0].value.value, str))
            first = body[1] if has_docstring and len(body) > 1 else body[0]
            length = node.end_lineno - first.lineno + 1
            if length > LONGEST_FUNCTION:
                found.append(f"{path.name}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_functions_stay_short(name):
    assert long_functions(MODULES[name]) == []
