"""The package's import structure (docs/architecture.md): imports go one way, down the layer table;
no cycle; no kdjax import inside a function; optional dependencies imported only where used.

Everything here reads the source with ``ast`` (module-level and in-function imports alike), so a
violation is found whether or not the code path that imports runs; the last test imports the
package in a fresh interpreter to check what it loads.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdjax"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Files whose in-function imports of kdjax modules are tolerated: none. The mechanism stays for a
# rewrite in flight (an entry naming a file without such imports fails the test).
IN_FUNCTION_ALLOWED: set[str] = set()

# Third-party packages that stay optional at import time: imported inside the function that uses
# them, never at module level, so that ``import kdjax`` (and any kdjax module) loads none of them.
OPTIONAL = ("tensorflow_datasets", "tensorflow", "grain", "ml_collections", "matplotlib", "torch", "array_record",
            "ai_edge_litert", "tensorboardX", "tensorboard", "qwix", "transformers", "safetensors", "torchvision")


# --- The source, parsed -----------------------------------------------------------------------------

def _modules() -> dict[str, Path]:
  """Every kdjax module by dotted name (a package by its own name, its file ``__init__.py``)."""
  mods = {}
  for f in sorted(PACKAGE.rglob("*.py")):
    parts = f.relative_to(ROOT).with_suffix("").parts
    mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
  return mods


MODULES = _modules()


def _rel(module: str) -> str:
  return MODULES[module].relative_to(ROOT).as_posix()


def _resolve(name: str) -> str | None:
  """The kdjax module that importing ``name`` runs last: ``name`` itself or its longest module prefix
  (``kdjax.models.cifar.ResNet`` -> ``kdjax.models.cifar``); None outside kdjax."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _absolute(node: ast.ImportFrom, module: str) -> str:
  if not node.level:
    return node.module or ""
  base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _in_function_nodes(tree: ast.AST) -> set[int]:
  inside = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      inside.update(id(n) for n in ast.walk(node) if n is not node)
  return inside


def _imports(module: str):
  """``(line, target, in_function, text)`` for every import statement of ``module``; ``target`` is
  the kdjax module it loads (None for a third-party one, whose top-level name ``text`` then holds)."""
  tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
  inside = _in_function_nodes(tree)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, _resolve(alias.name), id(node) in inside, alias.name
    elif isinstance(node, ast.ImportFrom):
      source = _absolute(node, module)
      for alias in node.names:  # `from kdjax.sweep import plots` imports the submodule kdjax.sweep.plots
        yield node.lineno, _resolve(f"{source}.{alias.name}") or _resolve(source), id(node) in inside, source


def _edges() -> dict[str, set[str]]:
  """Module -> the kdjax modules it imports, at module level or inside functions."""
  return {m: {t for _, t, _, _ in _imports(m) if t is not None and t != m} for m in MODULES}


# --- The layer table, read from docs/architecture.md ---------------------------------------------------

def _layer_table() -> dict[str, int]:
  """``{unit: layer}`` from the rows ``| N | `kdjax.x`, `kdjax.y` | ... |`` of docs/architecture.md;
  a unit is a module or a package (a package's modules are all in its layer)."""
  table = {}
  for line in ARCHITECTURE.read_text().splitlines():
    row = re.match(r"^\|\s*(\d+)\s*\|([^|]*)\|", line)
    if row:
      for unit in re.findall(r"`(kdjax(?:\.\w+)*)`", row.group(2)):
        assert unit not in table, f"{unit} appears twice in the layer table of {ARCHITECTURE}"
        table[unit] = int(row.group(1))
  assert table, f"no layer table (rows '| N | `kdjax.x`, ... |') found in {ARCHITECTURE}"
  return table


LAYERS = _layer_table()


def _unit(module: str) -> str | None:
  """The layer table's entry for ``module``: itself, or the package it belongs to (the root entry
  ``kdjax`` is the package's own ``__init__`` only)."""
  name = module
  while name:
    if name in LAYERS and (name != "kdjax" or module == "kdjax"):
      return name
    name = name.rpartition(".")[0]
  return None


def _cycles(edges: dict[str, set[str]], nodes: set[str]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan), restricted to ``nodes``."""
  index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v] & nodes):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(nodes):
    if v not in index:
      visit(v)
  return found


# --- The checks ----------------------------------------------------------------------------------------

def test_every_module_has_a_layer():
  missing = sorted(m for m in MODULES if _unit(m) is None)
  assert not missing, f"modules missing from the layer table of docs/architecture.md: {missing}"
  stale = sorted(u for u in LAYERS if u not in MODULES)
  assert not stale, f"the layer table of docs/architecture.md names modules that do not exist: {stale}"


def test_no_import_cycle():
  """No cycle among the package's modules (a package's ``__init__`` counted as a module too)."""
  edges = _edges()
  leaves = {m for m, f in MODULES.items() if f.name != "__init__.py"}
  assert not _cycles(edges, leaves), f"import cycles: {_cycles(edges, leaves)}"
  assert not _cycles(edges, set(MODULES)), f"import cycles through a package __init__: {_cycles(edges, set(MODULES))}"


def test_imports_go_down_the_layers():
  """A module imports only modules of its own unit (package) or of a lower layer."""
  upward = []
  for module in MODULES:
    for line, target, _, _ in _imports(module):
      if target is None or target == module:
        continue
      mine, theirs = _unit(module), _unit(target)
      if mine != theirs and LAYERS[theirs] >= LAYERS[mine]:
        upward.append(f"{_rel(module)}:{line} imports {target} (layer {LAYERS[theirs]} {theirs}) from layer "
                      f"{LAYERS[mine]} {mine}")
  assert not upward, "imports that do not go down the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_no_kdjax_import_inside_a_function():
  """kdjax modules are imported at the top of the module; only optional third-party packages are
  imported inside the function that uses them."""
  found = [f"{_rel(m)}:{line} imports {target}" for m in MODULES if _rel(m) not in IN_FUNCTION_ALLOWED
           for line, target, in_function, _ in _imports(m) if in_function and target is not None]
  assert not found, "in-function imports of kdjax modules (import them at the top):\n" + "\n".join(found)
  stale = sorted(f for f in IN_FUNCTION_ALLOWED
                 if not any(in_function and target for m in MODULES if _rel(m) == f
                            for _, target, in_function, _ in _imports(m)))
  assert not stale, f"IN_FUNCTION_ALLOWED lists files without in-function kdjax imports: delete {stale}"


def test_optional_packages_are_imported_only_inside_functions():
  found = [f"{_rel(m)}:{line} imports {name}" for m in MODULES for line, target, in_function, name in _imports(m)
           if target is None and not in_function and name.split(".")[0] in OPTIONAL]
  assert not found, "optional packages imported at module level (import them where used):\n" + "\n".join(found)


def test_importing_kdjax_loads_no_optional_package():
  """``import kdjax``, and importing every kdjax module, loads none of the optional packages."""
  code = (
      "import importlib, sys\n"
      f"optional = {OPTIONAL!r}\n"
      "def loaded():\n"
      "  return sorted({m.split('.')[0] for m in sys.modules} & set(optional))\n"
      "import kdjax\n"
      "print('kdjax', loaded())\n"
      f"for name in {sorted(MODULES)!r}:\n"
      "  importlib.import_module(name)\n"
      "print('all', loaded())\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ["kdjax []", "all []"], proc.stdout


def test_the_checks_catch_an_upward_import_and_a_cycle(monkeypatch):
  """The layer and cycle checks fail on a planted upward import (losses -> train), which also closes
  a cycle, and on an in-function kdjax import in a file outside the allow-list."""
  planted = {"kdjax.losses.logit": "from kdjax.train import fit\n",
             "kdjax.models.functional": "def f():\n  from kdjax.losses import kl_divergence\n"}
  real_parse = ast.parse

  def parse(source, filename="<unknown>", *args, **kwargs):
    for module, extra in planted.items():
      if Path(filename) == MODULES[module]:
        source = source + "\n" + extra
    return real_parse(source, filename, *args, **kwargs)

  monkeypatch.setattr(ast, "parse", parse)
  with pytest.raises(AssertionError, match=r"kdjax/losses/logit.py:\d+ imports kdjax.train"):
    test_imports_go_down_the_layers()
  with pytest.raises(AssertionError, match="import cycles"):
    test_no_import_cycle()
  with pytest.raises(AssertionError, match=r"kdjax/models/functional.py:\d+ imports kdjax.losses"):
    test_no_kdjax_import_inside_a_function()
