"""Imports point down: the library (trajectory/) never imports the planners or the experiments."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPPER = ("planners", "experiments")


def imported_modules(path: str) -> list[str]:
    tree = ast.parse(open(path).read(), filename=path)
    names = []
    for node in ast.walk(tree):  # local imports inside functions count too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_trajectory_never_imports_planners_or_experiments():
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "trajectory")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                offenders += [f"{os.path.relpath(path, ROOT)}: {module}" for module in imported_modules(path)
                              if module.split(".")[0] in UPPER]
    assert not offenders, "trajectory/ must not import upward:\n" + "\n".join(offenders)


def test_the_check_sees_local_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from planners.beam import BeamPlanner\n")
    assert imported_modules(str(source)) == ["planners.beam"]
