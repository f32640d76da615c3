"""The package's shape: no import cycle, no oversized module, method names decoded once."""

import ast
import pathlib
import re
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_mcv"
MAX_LINES = 700


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set) -> set:
    """The package modules `path` imports (at any depth in the file), resolved to modules."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in modules:
                found.add(name)
    return found


def _graph():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {m: _imports(p, modules) - {m} for m, p in files.items()}
    return graph


def test_no_import_cycle():
    graph = _graph()
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules
            if node.startswith(nxt + "."):
                continue  # a submodule importing names its parent re-exports from a sibling
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_cycle_check_can_fail(monkeypatch):
    """A planted cycle is caught (the check above is not vacuous)."""
    graph = {"keras_mcv.a": {"keras_mcv.b"}, "keras_mcv.b": {"keras_mcv.a"}}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: graph)
    try:
        test_no_import_cycle()
    except AssertionError as e:
        assert "keras_mcv.a -> keras_mcv.b -> keras_mcv.a" in str(e)
    else:
        raise AssertionError("a planted cycle went unnoticed")


def test_no_module_over_the_line_limit():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_method_names_are_decoded_only_in_the_registry():
    names = ("search1", "search2", "search3", "voting", "discard", "tuned", "race", "baseline")
    pattern = re.compile(r"""method\w*\s*(==|!=|\bin)\s*\(?["'](%s)["']""" % "|".join(names))
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "methods.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) or "method[-1]" in line:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not offenders, "method names compared outside keras_mcv/methods.py:\n" + "\n".join(offenders)
