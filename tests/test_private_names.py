"""fcmon reaches requests, urllib3, http.client and ssl (and socket, under
ssl) only through their public names: nothing private, which any release
may rename (docs/design-notes.md#the-probes-transport-public-extension-points-only).
The emulator, a test tool, is left out.

The check is an ast walk over fcmon/. A name is private when it starts with
one underscore (dunders are the language's). It reports:
  - an import of a private module or name of those libraries;
  - `obj._x` (and getattr/setattr/hasattr/delattr with "_x") on anything but
    `self`/`cls`, unless fcmon itself defines `_x` and the libraries do not;
  - in a class whose `self` is one of the libraries' objects (a subclass of
    one of their classes, or a mixin of such a subclass): `self._x` unless
    fcmon defines `_x` and the libraries do not, and a method `_x` that
    overrides one of theirs;
  - such a subclass's `__init__` that does not call the library's.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import textwrap
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fcmon"
LIBRARIES = ("requests", "urllib3", "http.client", "ssl", "socket", "_ssl", "_socket")
ACCESSORS = ("getattr", "setattr", "hasattr", "delattr")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_library(dotted: str) -> bool:
    return any(dotted == lib or dotted.startswith(lib + ".") for lib in LIBRARIES)


def library_private_names() -> Set[str]:
    """Every private name the libraries define or use on an object: module
    and class attributes, and every `x._y` their sources contain (instance
    attributes such as `Response._content` or `SSLSocket._sslobj`)."""
    import http.client
    import socket
    import ssl

    import requests
    import urllib3

    modules = [http.client, ssl, socket]
    for package in (requests, urllib3):
        modules.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception:  # an optional backend (urllib3.contrib.socks, emscripten, ...)
                continue
    names: Set[str] = set()
    for module in modules:
        for name, value in vars(module).items():
            if _private(name):
                names.add(name)
            if isinstance(value, type):
                for cls in value.__mro__[:-1]:
                    names.update(n for n in vars(cls) if _private(n))
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py"):
            tree = ast.parse(Path(path).read_text(encoding="utf-8"))
            names.update(node.attr for node in ast.walk(tree)
                         if isinstance(node, ast.Attribute) and _private(node.attr))
    return names


def _dotted(node: ast.AST) -> Optional[str]:
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _imports(tree: ast.Module) -> Dict[str, str]:
    """Local name -> the dotted name it stands for."""
    out: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    out[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    out[top] = top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                out[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return out


def _own_names(trees: Iterable[ast.Module]) -> Set[str]:
    """Private names fcmon defines: assigned attributes, class and module
    members, __slots__ entries."""
    own: Set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                own.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                    for t in node.targets):
                for elt in ast.walk(node.value):
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                        own.add(elt.value)
    return {n for n in own if _private(n)}


def find_private_uses(sources: Dict[str, str], library_private: Set[str]) -> List[str]:
    """Findings ("file:line: what") for the rules in the module docstring."""
    trees = {name: ast.parse(src, name) for name, src in sources.items()}
    own = _own_names(trees.values()) - library_private
    imports = {name: _imports(tree) for name, tree in trees.items()}
    # classes by name: (file, node); library-bound: `self` is a library object
    classes: Dict[str, List[Tuple[str, ast.ClassDef]]] = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append((name, node))

    def library_base(file: str, base: ast.AST) -> Optional[str]:
        dotted = _dotted(base)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        full = imports[file].get(head)
        if full is None:
            return None
        full = f"{full}.{rest}" if rest else full
        return full if _is_library(full) else None

    bound: Set[int] = set()
    direct: Set[int] = set()
    for entries in classes.values():
        for file, node in entries:
            if any(library_base(file, b) for b in node.bases):
                bound.add(id(node))
                direct.add(id(node))
    changed = True
    while changed:
        changed = False
        for entries in classes.values():
            for file, node in entries:
                fcmon_bases = [c for b in node.bases if isinstance(b, ast.Name) for _, c in classes.get(b.id, [])]
                if id(node) not in bound and any(id(c) in bound for c in fcmon_bases):
                    bound.add(id(node))
                    changed = True
                if id(node) in bound:
                    for c in fcmon_bases:
                        if id(c) not in bound:
                            bound.add(id(c))
                            changed = True

    findings: List[str] = []

    def bad(name: str) -> bool:
        return _private(name) and (name in library_private or name not in own)

    for file, tree in trees.items():
        for node in ast.walk(tree):
            where = f"{file}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_library(alias.name) and any(_private(p) for p in alias.name.split(".")):
                        findings.append(f"{where}: imports private module {alias.name}")
            elif isinstance(node, ast.ImportFrom) and node.module and _is_library(node.module):
                if any(_private(p) for p in node.module.split(".")):
                    findings.append(f"{where}: imports from private module {node.module}")
                for alias in node.names:
                    if _private(alias.name):
                        findings.append(f"{where}: imports private {node.module}.{alias.name}")
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if not on_self and bad(node.attr):
                    findings.append(f"{where}: private attribute .{node.attr}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ACCESSORS
                  and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and bad(node.args[1].value)):
                findings.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
        for entries in classes.values():
            for cfile, cls in entries:
                if cfile != file or id(cls) not in bound:
                    continue
                for node in ast.walk(cls):
                    where = f"{file}:{getattr(node, 'lineno', '?')}"
                    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                            and node.value.id in ("self", "cls") and bad(node.attr)):
                        findings.append(f"{where}: {cls.name} uses the library's private self.{node.attr}")
                for item in cls.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        if _private(item.name) and item.name in library_private:
                            findings.append(f"{file}:{item.lineno}: {cls.name} overrides private {item.name}")
                        if item.name == "__init__" and id(cls) in direct and not _calls_init(item):
                            findings.append(f"{file}:{item.lineno}: {cls.name}.__init__ skips the library's __init__")
    return sorted(set(findings))


def _calls_init(func: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "__init__"
               for n in ast.walk(func))


def fcmon_sources() -> Dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(PACKAGE.rglob("*.py"))
            if "emulator" not in p.relative_to(PACKAGE).parts}


@pytest.fixture(scope="module")
def library_private() -> Set[str]:
    names = library_private_names()
    # the vocabulary is real: the names this module was written against are in it
    assert {"_get_conn", "_put_conn", "_get_timeout", "_dns_host", "_new_conn", "_content",
            "_content_consumed", "_sslobj"} <= names
    return names


def test_fcmon_uses_no_private_name_of_requests_urllib3_http_client_or_ssl(library_private: Set[str]) -> None:
    sources = fcmon_sources()
    assert "fcmon/client.py" in sources or any(p.endswith("/client.py") for p in sources)
    assert find_private_uses(sources, library_private) == []


# What fcmon/client.py did before (issue 18), one snippet per kind: each must be found.
_REINTRODUCED = {
    "pool internals": """
        class Client:
            def connect(self):
                conn = self.pool._get_conn()
                self.pool._put_conn(conn)
    """,
    "a rebuilt urlopen": """
        from urllib3.connectionpool import HTTPSConnectionPool
        class _Lean:
            def urlopen(self, method, url):
                timeout = self._get_timeout(None)
                return self._get_conn(timeout=timeout)
        class Pool(_Lean, HTTPSConnectionPool):
            pass
    """,
    "the connection's DNS host, from a mixin": """
        from urllib3.connection import HTTPSConnection
        class _Mixin:
            def connect(self):
                return self._dns_host
        class Conn(_Mixin, HTTPSConnection):
            pass
    """,
    "overriding _new_conn": """
        from urllib3.connection import HTTPConnection
        class Conn(HTTPConnection):
            def _new_conn(self):
                return super()._new_conn()
    """,
    "Response._content": """
        import requests
        def build(body):
            response = requests.Response()
            response._content = body
            return response
    """,
    "skipping Session.__init__": """
        import requests
        class Session(requests.Session):
            def __init__(self, adapter):
                self.adapters = {}
    """,
    "the private _sslobj": """
        def chain(sock):
            getter = getattr(sock, "_sslobj", None)
            return sock._sslobj.get_unverified_chain()
    """,
    "ssl._ssl": """
        import ssl
        from ssl import _ssl
        import _ssl as raw
        ENCODING = ssl._ssl.ENCODING_DER
    """,
}


@pytest.mark.parametrize("kind", sorted(_REINTRODUCED))
def test_the_checker_finds_each_private_use_the_client_had(kind: str, library_private: Set[str]) -> None:
    snippet = textwrap.dedent(_REINTRODUCED[kind])
    assert find_private_uses({"fcmon/snippet.py": snippet}, library_private), kind


def test_the_checker_finds_them_among_fcmon_s_sources(library_private: Set[str]) -> None:
    """fcmon defining private names of its own hides none of them."""
    snippets = {f"fcmon/snippet{i}.py": textwrap.dedent(_REINTRODUCED[kind])
                for i, kind in enumerate(sorted(_REINTRODUCED))}
    findings = find_private_uses(dict(fcmon_sources(), **snippets), library_private)
    assert {f.split(":")[0] for f in findings} == set(snippets)


def test_the_checker_allows_fcmon_s_own_private_names(library_private: Set[str]) -> None:
    snippet = textwrap.dedent("""
        import threading
        from requests.adapters import HTTPAdapter
        class Store:
            __slots__ = ("_items",)
            def __init__(self):
                self._items = {}
                self._lock = threading.Lock()
            def get(self, other):
                return other._items, _helper()
        def _helper():
            return None
        class Adapter(HTTPAdapter):
            def __init__(self, conn):
                self.fcmon_conn = conn
                super().__init__(max_retries=0)
    """)
    assert find_private_uses({"fcmon/snippet.py": snippet}, library_private) == []

