"""The layer order of fcmon's packages (docs/design-notes.md#layers-which-package-may-import-which).

Every import in fcmon/ (module level or inside a function) is read with
`ast` and mapped to a layer; an import of a higher layer fails, and so
does a module no layer names, an import of the emulator from outside the
commands that run it, and an import cycle between modules. From the
bottom: core (config, runbook, pki, assetfiles, the package's version) <
probe < export < web < service < commands < top (cli, __main__).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fcmon"

LAYERS = ("core", "probe", "export", "web", "service", "commands", "top")
#: Modules directly under fcmon/ and their layer; a new one must be placed here.
TOP_MODULES = {
    "__init__": "core", "config": "core", "runbook": "core", "pki": "core", "assetfiles": "core",
    "cli": "top", "__main__": "top",
}
#: The emulator stands beside the layers: it may import core and probe (the
#: socket wait, the version), and only these may import it.
EMULATOR_IMPORTS = {"core", "probe"}
EMULATOR_IMPORTERS = {"commands", "top"}

Edge = Tuple[str, str]  # (importing module, imported module or package)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, is_package: bool = False) -> List[str]:
    """What `module` imports of fcmon, resolved to absolute names; `from
    pkg import name` names `pkg.name` (a module or not: the layer is the same)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [f"{target}.{alias.name}" for alias in node.names]
    return [name for name in found if name == "fcmon" or name.startswith("fcmon.")]


def layer_of(name: str) -> Optional[str]:
    """The layer of a module (or of a name inside one); None: not placed."""
    parts = name.split(".")
    if parts[0] != "fcmon":
        return None
    if len(parts) == 1:
        return "core"  # the package itself: __version__
    if parts[1] == "emulator":
        return "emulator"
    if parts[1] in LAYERS[1:-1]:
        return parts[1]
    if len(parts) >= 2 and parts[1] in TOP_MODULES:
        return TOP_MODULES[parts[1]]
    return "core" if parts[1] == "__version__" else None


def violations(edges: Iterable[Edge]) -> List[str]:
    problems = []
    for importer, imported in edges:
        lower, upper = layer_of(importer), layer_of(imported)
        if lower is None or upper is None:
            problems.append(f"{importer} -> {imported}: place {importer if lower is None else imported} in a layer")
        elif upper == "emulator" and lower != "emulator" and lower not in EMULATOR_IMPORTERS:
            problems.append(f"{importer} -> {imported}: only {sorted(EMULATOR_IMPORTERS)} may import the emulator")
        elif lower == "emulator" and upper != "emulator" and upper not in EMULATOR_IMPORTS:
            problems.append(f"{importer} -> {imported}: the emulator imports only {sorted(EMULATOR_IMPORTS)}")
        elif "emulator" not in (lower, upper) and LAYERS.index(upper) > LAYERS.index(lower):
            problems.append(f"{importer} ({lower}) -> {imported} ({upper}): runs up")
    return problems


def cycles(edges: Iterable[Edge], modules: Set[str]) -> List[List[str]]:
    """Import cycles between modules (an edge to `pkg.name` counts as one to
    the module `pkg.name` if there is one, else to `pkg`)."""
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for importer, imported in edges:
        target = imported if imported in modules else imported.rpartition(".")[0]
        if target in modules and target != importer:
            graph[importer].add(target)
    found, done = [], set()

    def visit(node: str, path: List[str]) -> None:
        if node in path:
            found.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    return found


def fcmon_edges() -> Tuple[List[Edge], Set[str]]:
    edges, modules = [], set()
    for path in sorted(PACKAGE.rglob("*.py")):
        if "assets" in path.relative_to(PACKAGE).parts:
            continue
        module = module_name(path)
        modules.add(module)
        source = path.read_text(encoding="utf-8")
        edges += [(module, name) for name in imports_of(module, source, path.name == "__init__.py")]
    return edges, modules


def test_no_import_runs_up_a_layer() -> None:
    edges, modules = fcmon_edges()
    assert len(modules) >= 40 and len(edges) >= 150, "the checker read fcmon/"
    assert violations(edges) == []


def test_no_import_cycle_between_modules() -> None:
    edges, modules = fcmon_edges()
    assert cycles(edges, modules) == []


def test_few_modules_at_the_top() -> None:
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == sorted(TOP_MODULES), "a module directly under fcmon/ is placed in TOP_MODULES (or a sub-package)"
    assert len(top) <= 12


def test_the_checker_catches_an_import_running_up() -> None:
    # Read from source, as fcmon/'s own files are: export importing web,
    # probe importing service (inside a function), core importing probe.
    source = "from ..web.httpd import REJECT_REASONS\n"
    assert violations((("fcmon.export.metrics", n) for n in imports_of("fcmon.export.metrics", source))) == [
        "fcmon.export.metrics (export) -> fcmon.web.httpd.REJECT_REASONS (web): runs up"]
    source = "def f():\n    from ..service import daemon\n"
    assert len(violations(("fcmon.probe.run", n) for n in imports_of("fcmon.probe.run", source))) == 1
    assert len(violations([("fcmon.config", "fcmon.probe.certs.CERT_WARN_DAYS")])) == 1
    # Down and sideways are allowed.
    assert violations([("fcmon.web.app", "fcmon.export.status.StatusSnapshot"),
                       ("fcmon.probe.run", "fcmon.probe.client.ApiClient"),
                       ("fcmon.cli", "fcmon.commands.check.run_check"),
                       ("fcmon.probe.listeners", "fcmon.config.TargetConfig")]) == []


def test_the_checker_keeps_the_emulator_apart_and_places_every_module() -> None:
    assert violations([("fcmon.commands.demo", "fcmon.emulator.Emulator"),
                       ("fcmon.cli", "fcmon.emulator.cli.add_arguments"),
                       ("fcmon.emulator.server", "fcmon.probe.sockwait.wait_readable"),
                       ("fcmon.emulator.server", "fcmon.__version__")]) == []
    assert len(violations([("fcmon.service.daemon", "fcmon.emulator.Emulator")])) == 1
    assert len(violations([("fcmon.emulator.server", "fcmon.export.metrics.MetricsStore")])) == 1
    assert violations([("fcmon.newthing", "fcmon.config.Config")]) == [
        "fcmon.newthing -> fcmon.config.Config: place fcmon.newthing in a layer"]


def test_the_checker_catches_a_cycle() -> None:
    modules = {"fcmon.emulator.server", "fcmon.emulator.listeners", "fcmon.emulator.tlscontext"}
    circle = [("fcmon.emulator.server", "fcmon.emulator.listeners.ListenerSpec"),
              ("fcmon.emulator.listeners", "fcmon.emulator.server.server_ssl_context")]
    assert cycles(circle, modules) == [["fcmon.emulator.listeners", "fcmon.emulator.server", "fcmon.emulator.listeners"]]
    broken = [circle[0], ("fcmon.emulator.listeners", "fcmon.emulator.tlscontext.server_ssl_context"),
              ("fcmon.emulator.server", "fcmon.emulator.tlscontext.server_ssl_context")]
    assert cycles(broken, modules) == []


def test_only_the_commands_that_run_it_load_the_emulator(tmp_path: Path) -> None:
    """At run time too: the daemon, `fcmon check` and `fcmon validate` (their
    argument parsing included) leave the emulator unimported; `fcmon emulator`
    loads it."""
    missing = str(tmp_path / "missing.ini")
    code = f"""if True:
        import contextlib, io, sys
        import fcmon.service.daemon, fcmon.commands.check, fcmon.commands.validate
        from fcmon import cli
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            codes = [cli.main(["check", "-c", {missing!r}]), cli.main(["validate", "-c", {missing!r}])]
            print(codes, "fcmon.emulator" in sys.modules, file=sys.__stdout__)
            try:
                cli.main(["emulator", "--help"])
            except SystemExit as exc:
                print(exc.code, "fcmon.emulator" in sys.modules, file=sys.__stdout__)
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["[3, 1] False", "0 True"], out.stderr


def test_readme_module_map_names_every_module_in_its_layer() -> None:
    """README's "Development" map: a row per module, in the layer this test gives it."""
    mapped: Dict[str, str] = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0] in LAYERS:
            for path in re.findall(r"`(fcmon/[\w/]+\.py)`", cells[1]):
                mapped[path] = cells[0]
    modules = [p for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and "emulator" not in p.relative_to(PACKAGE).parts
               and "assets" not in p.relative_to(PACKAGE).parts]
    assert len(modules) >= 40
    for path in modules:
        rel = path.relative_to(ROOT).as_posix()
        assert rel in mapped, f"README's module map has no row for {rel}"
        assert mapped[rel] == layer_of(module_name(path)), (rel, mapped[rel])
    assert sorted(mapped) == sorted(p.relative_to(ROOT).as_posix() for p in modules), "a row for a module that is gone"
