"""The import graph of `ureward_jax/`: no cycles, every edge one way through the layers below, no torch, short modules.

Edges are read with `ast`, imports inside functions included (a cycle hidden in a function is still one in the
design): `import a.b` is an edge to the module `a.b`; `from a import b` one to `a.b` when that is a module, else to
`a`. `ureward_jax/__init__.py` sits above every layer: it may import anything, and importing it counts as importing
what it imports.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "ureward_jax"

# Lowest first. A module may import a module of a strictly lower layer, or one of its own top-level subpackage.
LAYERS = {
    0: ("errors",),   # the leaf: it imports nothing else of ureward_jax
    1: ("parallel", "processing", "outputs"),
    2: ("nn", "pretrained"),
    3: ("models",),
    4: ("runners",),
    5: ("pipelines",),
    6: ("reward",),
    7: ("data", "preference"),
    8: ("train", "serve"),
    9: ("cli",),
}   # and ureward_jax/__init__.py above them all (see above)
# Edges the layers allow that the design does not: models are pure Linen modules; the runners build the
# processing objects a model config implies.
FORBIDDEN = {"models": ("processing",)}
# What converters/ may import of ureward_jax.
CONVERTERS_IMPORT = ("models", "pretrained", "runners", "pipelines", "errors", "outputs")
# Top-level names nothing in ureward_jax/ imports.
OUTSIDE = ("launch", "converters", "configs", "tests", "bench", "torch")
MAX_LINES = 450


def modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
  """Dotted module name → file, for every module of `package` under `root` (a package is its `__init__.py`)."""
  out = {}
  for path in sorted((root / package).rglob("*.py")):
    name = ".".join(path.relative_to(root).with_suffix("").parts)
    out[name.removesuffix(".__init__")] = path
  return out


def imports(path: pathlib.Path, name: str) -> list[tuple[str, str | None]]:
  """(module, name imported from it or None) for every import statement of the file, absolute."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(alias.name, None) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parent + [base] if base else parent)
      out += [(base, alias.name) for alias in node.names]
  return out


def graph(root: pathlib.Path, package: str) -> dict[str, set[str]]:
  """module → the modules of `package` it imports."""
  known = modules(root, package)

  def resolve(target: str) -> str | None:
    while target and target not in known:
      target = target.rpartition(".")[0]
    return target or None

  edges = {}
  for name, path in known.items():
    targets = set()
    for module, item in imports(path, name):
      if module.split(".")[0] == package:
        targets.add(f"{module}.{item}" if item and f"{module}.{item}" in known else resolve(module))
    edges[name] = targets - {None, name}
  return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while not component or component[-1] != v:
        component.append(stack.pop())
        on_stack.discard(component[-1])
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def subpackage(module: str) -> str:
  """The top-level subpackage (or module) of the package that `module` is in: "models" for `ureward_jax.models.vae`."""
  return module.split(".")[1]


def layer_violations(edges: dict[str, set[str]], package: str) -> list[str]:
  """Every edge against `LAYERS` or `FORBIDDEN` as "a -> b: why", and every module of no layer."""
  layer_of = {part: n for n, parts in LAYERS.items() for part in parts}
  problems = []
  for source in sorted(set(edges) - {package}):
    part = subpackage(source)
    if part not in layer_of:
      problems.append(f"{source} has no layer: add {part!r} to LAYERS")
      continue
    for target in sorted(edges[source]):
      for reached in sorted(edges[package]) if target == package else [target]:
        other = subpackage(reached)
        edge = f"{source} -> {target}" + (f" -> {reached}" if reached != target else "")
        if other == part or other not in layer_of:   # a module of no layer is reported as a source
          continue
        if layer_of[other] >= layer_of[part]:
          problems.append(f"{edge}: layer {layer_of[part]} ({part}) imports layer {layer_of[other]} ({other})")
        elif other in FORBIDDEN.get(part, ()):
          problems.append(f"{edge}: {part} must not import {other}")
  return problems


EDGES = graph(ROOT, PACKAGE)


def test_no_import_cycles():
  found = cycles(EDGES)
  assert not found, "\n".join(
      f"import cycle among {', '.join(c)}: " + ", ".join(f"{a} -> {b}" for a in c for b in sorted(EDGES[a] & set(c)))
      for c in found)


def test_imports_follow_the_layers():
  problems = layer_violations(EDGES, PACKAGE)
  assert not problems, "\n".join(problems)


def test_no_tool_test_or_torch_imports():
  found = [f"{name} imports {module}" for name, path in modules(ROOT, PACKAGE).items()
           for module, _ in imports(path, name) if module.split(".")[0] in OUTSIDE]
  assert not found, "\n".join(found)


def test_converters_import_models_and_checkpoints_only():
  found = []
  for name, path in modules(ROOT, "converters").items():
    for module, item in imports(path, name):
      target = f"{module}.{item}" if item else module
      top, _, rest = target.partition(".")
      if top == "launch" or (top == PACKAGE and rest.split(".")[0] not in CONVERTERS_IMPORT):
        found.append(f"{name} imports {target}")
  assert not found, "\n".join(found)


def test_modules_are_short():
  lengths = {path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
             for path in modules(ROOT, PACKAGE).values()}
  too_long = [f"{path}: {n} lines" for path, n in sorted(lengths.items()) if n > MAX_LINES]
  assert not too_long, f"modules of ureward_jax/ stay within {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_the_checks_see_a_cycle_an_upward_edge_and_a_forbidden_one(tmp_path):
  files = {"__init__.py": "from pkg import runners\n",
           "processing.py": "import pkg\n",
           "models/__init__.py": "",
           "models/b.py": "from pkg.processing import y\n\ndef f():\n  from pkg.runners.a import x\n",
           "runners/__init__.py": "",
           "runners/a.py": "from pkg.models import b\n"}
  for name, text in files.items():
    (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "pkg" / name).write_text(text)
  edges = graph(tmp_path, "pkg")
  assert cycles(edges) == [["pkg.models.b", "pkg.runners.a"]]
  assert layer_violations(edges, "pkg") == [
      "pkg.models.b -> pkg.processing: models must not import processing",
      "pkg.models.b -> pkg.runners.a: layer 3 (models) imports layer 4 (runners)",
      "pkg.processing -> pkg -> pkg.runners: layer 1 (processing) imports layer 4 (runners)"]
