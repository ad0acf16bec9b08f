"""The package's floors, read from the source with `ast` (every import, at the top of a file or inside a
function, under `if TYPE_CHECKING:` too): the samplers know nothing above them (methods, the trainer, the
bench), and the library (README, "Development") imports nothing from the trainer or the bench."""
from __future__ import annotations

import ast
from pathlib import Path

import timestep_sampling

PACKAGE = Path(timestep_sampling.__file__).parent
# README, "Development": the library needs only torch, numpy and scipy and imports nothing from these.
TRAINER = {"train", "data", "models", "evaluate", "sampling", "cli"}
ABOVE_THE_SAMPLERS = {"methods", "bench"} | TRAINER
LIBRARY = {"__init__", "samplers", "weighting", "methods", "diffusion", "bound", "schedule"}
# what the library itself stands on; any other module it came to import would be a new floor to decide on
LIBRARY_HELPERS = {"errors", "registry", "devices", "distributed", "flow"}


def imports_of(path: Path, package: Path = PACKAGE) -> set[str]:
    """The dotted names of the package's modules that a file imports, anywhere in it: `from ..methods import
    X` in samplers/base.py gives "timestep_sampling.methods", `from .. import samplers` gives
    "timestep_sampling.samplers", `import timestep_sampling.train` gives itself."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    here = parts[:-1]  # the package the file is in (for an __init__.py, the package it makes)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == package.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join([*here[:len(here) - node.level + 1], *filter(None, [node.module])])
            elif (node.module or "").split(".")[0] == package.name:
                module = node.module
            else:
                continue
            for alias in node.names:  # `from .. import samplers` imports a submodule, `from .base import X` base
                submodule = f"{module}.{alias.name}"
                found.add(submodule if module_path(submodule, package) else module)
    return {name for name in found if name != package.name and module_path(name, package) is not None}


def module_path(name: str, package: Path = PACKAGE) -> Path | None:
    """The file of a module of the package by its dotted name, or None (the name of a function or class)."""
    relative = Path(*name.split(".")[1:])
    for path in (package / relative / "__init__.py", (package / relative).with_suffix(".py")):
        if path.is_file():
            return path
    return None


def floor(name: str) -> str:
    """The top-level module of the package a dotted name belongs to: "timestep_sampling.samplers.base" is in
    "samplers", the package itself is "__init__"."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def reach(roots: set[str], package: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package that importing `roots` imports, directly or through others, each with the
    module that first imports it. A module's parent packages are not followed: importing
    timestep_sampling.samplers runs timestep_sampling/__init__.py, but that is not the samplers' doing (nor is
    `from .. import x` an import of the package's __init__)."""
    seen, todo = {root: "" for root in roots}, sorted(roots)
    while todo:
        module = todo.pop()
        for dep in sorted(imports_of(module_path(module, package), package)):
            if dep not in seen:
                seen[dep] = module
                todo.append(dep)
    return seen


def chain(seen: dict[str, str], module: str) -> str:
    """How a module is reached: "timestep_sampling.methods <- timestep_sampling.samplers.base <- ..."."""
    path = [module]
    while seen[path[-1]]:
        path.append(seen[path[-1]])
    return " <- ".join(path)


def samplers_reaching_above(package: Path = PACKAGE) -> list[str]:
    samplers = {f"{package.name}.samplers.{p.stem}" for p in (package / "samplers").glob("*.py")}
    seen = reach(samplers | {f"{package.name}.samplers"}, package)
    return [chain(seen, m) for m in sorted(seen) if floor(m) in ABOVE_THE_SAMPLERS]


def test_the_samplers_import_nothing_above_them():
    assert (PACKAGE / "samplers" / "base.py").is_file() and (PACKAGE / "samplers" / "adaptive.py").is_file()
    wrong = samplers_reaching_above()
    assert not wrong, "the samplers import the layers above them: " + "; ".join(wrong)


def test_the_library_imports_nothing_from_the_trainer():
    """The library: the package's namespace (its __init__ imports), samplers, weighting, methods, diffusion,
    bound, schedule; it stands on errors, registry, devices, distributed and flow, and on nothing else."""
    roots = {"timestep_sampling"} | {f"timestep_sampling.{name}" for name in LIBRARY - {"__init__"}}
    seen = reach(roots)
    wrong = [chain(seen, m) for m in sorted(seen) if floor(m) in TRAINER | {"bench"}]
    assert not wrong, "the library imports the trainer: " + "; ".join(wrong)
    unexpected = [chain(seen, m) for m in sorted(seen) if floor(m) not in LIBRARY | LIBRARY_HELPERS]
    assert not unexpected, "the library imports a module outside it and its helpers: " + "; ".join(unexpected)
    assert {"flow", "errors", "registry"} <= {floor(m) for m in seen}  # the walk does follow the imports


def test_the_check_sees_imports_inside_functions_and_under_type_checking(tmp_path):
    """The circle this test was written against: samplers/base.py imported ..methods inside a function."""
    fake = tmp_path / "timestep_sampling"
    (fake / "samplers").mkdir(parents=True)
    (fake / "__init__.py").write_text("from .methods import make_method\n")
    (fake / "methods.py").write_text("from .samplers import make_sampler\n")
    (fake / "train.py").write_text("")
    (fake / "samplers" / "__init__.py").write_text("from .base import make_sampler\n")
    (fake / "samplers" / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import train\n"
        "def make_sampler():\n    from ..methods import METHODS\n")
    (fake / "samplers" / "fixed.py").write_text("import timestep_sampling.schedule\nfrom . import base\n")
    assert imports_of(fake / "samplers" / "base.py", fake) == {"timestep_sampling.methods", "timestep_sampling.train"}
    assert imports_of(fake / "samplers" / "fixed.py", fake) == {"timestep_sampling.samplers.base"}  # no schedule.py
    assert samplers_reaching_above(fake) == ["timestep_sampling.methods <- timestep_sampling.samplers.base",
                                             "timestep_sampling.train <- timestep_sampling.samplers.base"]
