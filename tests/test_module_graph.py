"""No import cycle among the modules of python/fusedopt (issue 13): each module's imports of
its siblings, read from its source, form a graph without a cycle."""
import ast
import os

import fusedopt

PACKAGE = os.path.dirname(os.path.abspath(fusedopt.__file__))


def sibling_imports(path):
    """The sibling modules a module imports (``from . import a``, ``from .a import b``)."""
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def test_no_import_cycle():
    modules = {f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"}
    graph = {m: sibling_imports(os.path.join(PACKAGE, m + ".py")) & modules for m in modules}
    assert graph["optimizers"] >= {"_state", "schedules"} and "optimizers" not in graph["_state"]
    state = {}  # module -> "visiting" | "done"

    def visit(module, chain):
        if state.get(module) == "done":
            return
        assert state.get(module) != "visiting", f"import cycle: {' -> '.join(chain + [module])}"
        state[module] = "visiting"
        for other in sorted(graph[module]):
            visit(other, chain + [module])
        state[module] = "done"

    for module in sorted(modules):
        visit(module, [])
