"""No import cycle among the modules of python/fusedopt (issue 13), and one folder per family
(issue 24): each module's imports of other fusedopt modules, read from its source, form a graph
without a cycle."""
import ast
import os

import fusedopt

PACKAGE = os.path.dirname(os.path.abspath(fusedopt.__file__))


def modules():
    """Dotted names (relative to fusedopt, '' for the package) -> source path."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        rel = os.path.relpath(folder, PACKAGE)
        prefix = [] if rel == "." else rel.split(os.sep)
        for f in files:
            if f.endswith(".py"):
                parts = prefix + ([] if f == "__init__.py" else [f[:-3]])
                found[".".join(parts)] = os.path.join(folder, f)
    return found


def imports_of(name, path, known):
    """The fusedopt modules that module `name` imports with relative imports."""
    is_package = path.endswith("__init__.py")
    here = name.split(".") if name else []
    base_of_level1 = here if is_package else here[:-1]
    with open(path, encoding="utf-8") as source:
        tree = ast.parse(source.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = base_of_level1[:len(base_of_level1) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join(target + [alias.name])
                names.add(candidate if candidate in known else ".".join(target))
    # "" is fusedopt/__init__.py: `from .. import _core` reaches an attribute of the
    # package, which every submodule can only run inside, not a module of its own
    return {n for n in names if n in known and n not in (name, "")}


def test_families_have_folders():
    found = modules()
    assert {"optim", "torch", "distributed", "_paysage", "optimizers", "schedules"} <= set(found)
    # no family helper left at the top (the flat layout's _optim_*, _torch_*, _dist_* names)
    top = {n for n in found if "." not in n}
    assert not {n for n in top if n.startswith(("_optim", "_torch", "_dist"))}


def test_no_import_cycle():
    found = modules()
    graph = {m: imports_of(m, p, found) for m, p in found.items()}
    assert "_paysage.state" in graph["optimizers"] and "optimizers" not in graph["_paysage.state"]
    state = {}  # module -> "visiting" | "done"

    def visit(module, chain):
        if state.get(module) == "done":
            return
        assert state.get(module) != "visiting", f"import cycle: {' -> '.join(chain + [module])}"
        state[module] = "visiting"
        for other in sorted(graph[module]):
            visit(other, chain + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module:  # the package's own __init__ imports everything by design
            visit(module, [])
