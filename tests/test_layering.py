"""Imports point down: the library (trajectory/) never imports the planners or the experiments, the
models never import the data or the behaviour policies, and no modules import each other in a
circle. Imports inside functions count too: they run all the same, only later."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("trajectory", "planners", "experiments")
UPPER = ("planners", "experiments")
# folder -> the packages its modules must not import
BELOW = {
    "trajectory/models": ("trajectory.data", "trajectory.behaviour"),
    # the data sources import the generator, not back; the behaviour policies save their folders
    # with trajectory.checkpoint_folder, not through the trajectory model's checkpoint module
    "trajectory/behaviour": ("trajectory.data", "trajectory.checkpoint"),
}


def imported_modules(path: str, known: set[str] | None = None) -> list[str]:
    """Absolute imports of a file. ``from a.b import c`` names ``a.b.c`` when that is one of the
    ``known`` modules (a submodule), else ``a.b``."""
    tree = ast.parse(open(path).read(), filename=path)
    names = []
    for node in ast.walk(tree):  # local imports inside functions count too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            found = [name for name in submodules if known and name in known]
            names += found if len(found) == len(submodules) else [node.module, *found]
    return names


def package_modules(*packages: str) -> dict[str, str]:
    """Dotted module name -> file, for every module of ``packages`` (a package is its __init__)."""
    modules = {}
    for package in packages:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    modules[dotted.removesuffix(".__init__")] = path
    return modules


def files_under(folder: str) -> list[str]:
    return sorted(os.path.join(d, name) for d, _, files in os.walk(os.path.join(ROOT, folder))
                  for name in files if name.endswith(".py"))


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), as a path back to its start."""
    done, path = set(), []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module):] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph[module]):
            circle = visit(target)
            if circle:
                return circle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module)
        if circle:
            return circle
    return None


def import_graph(*packages: str) -> dict[str, set[str]]:
    modules = package_modules(*packages)
    known = set(modules)
    return {module: {m for m in imported_modules(path, known) if m in known and m != module}
            for module, path in modules.items()}


def test_trajectory_never_imports_planners_or_experiments():
    offenders = [f"{os.path.relpath(path, ROOT)}: {module}" for path in files_under("trajectory")
                 for module in imported_modules(path) if within(module, UPPER)]
    assert not offenders, "trajectory/ must not import upward:\n" + "\n".join(offenders)


@pytest.mark.parametrize("folder", sorted(BELOW))
def test_lower_layers_never_import_the_layers_that_use_them(folder):
    offenders = [f"{os.path.relpath(path, ROOT)}: {module}" for path in files_under(folder)
                 for module in imported_modules(path) if within(module, BELOW[folder])]
    assert not offenders, f"{folder}/ must not import {', '.join(BELOW[folder])}:\n" + "\n".join(offenders)


def test_no_modules_import_each_other_in_a_circle():
    circle = find_circle(import_graph(*PACKAGES))
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_no_parts_of_the_library_import_each_other_in_a_circle():
    """The same at the level of trajectory's parts (data, behaviour, models, training, and each
    top-level module): a part may use another only if that one never comes back to it."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph("trajectory").items():
        graph.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    circle = find_circle(graph)
    assert circle is None, "circle between parts of trajectory/: " + " -> ".join(circle)


def test_the_checks_see_local_imports_submodules_and_circles(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from planners.beam import BeamPlanner\n"
                      "from trajectory.models import layers, critic\n")
    known = {"trajectory.models.layers"}
    assert sorted(imported_modules(str(source), known)) == ["planners.beam", "trajectory.models",
                                                            "trajectory.models.layers"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
