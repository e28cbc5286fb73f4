"""Shared fixtures: a real throw-away PKI and the emulator over loopback TLS
with client certificates required."""

from __future__ import annotations

from typing import Iterator

import pytest

from fcmon import pki
from fcmon.emulator import Emulator
from support import PKI, Dists, release_tools, require_module


def pytest_collection_modifyitems(config: pytest.Config, items: "list[pytest.Item]") -> None:
    """Tests marked `package` exercise the built image and Debian package (as
    root, minutes): only a run that asks for them (`-m package`, which
    `make test-packages` passes) collects them; `make test` leaves them out."""
    if "package" in (config.option.markexpr or ""):
        return
    skipped = [item for item in items if item.get_closest_marker("package") is not None]
    if skipped:
        config.hook.pytest_deselected(items=skipped)
        items[:] = [item for item in items if item.get_closest_marker("package") is None]


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    files = pki.write_demo_pki(d)
    return PKI(d, files.ca, files.ca_file, files.server, files.client)


@pytest.fixture(scope="session")
def session_emulator(test_pki: PKI) -> Iterator[Emulator]:
    emu = Emulator(cert_file=test_pki.server.cert, key_file=test_pki.server.key,
                   client_ca_file=test_pki.ca_file)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture
def emulator(session_emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator, with faults cleared before and after each test."""
    session_emulator.clear_faults()
    yield session_emulator
    session_emulator.clear_faults()




@pytest.fixture(scope="session")
def release_dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """`make dist` and `make wheelhouse`, by the same code, into a temp dir:
    built once per session for every test that needs the release."""
    require_module("build")
    require_module("twine")
    release = release_tools()
    out = tmp_path_factory.mktemp("dist")
    sdist, wheel = release.build(out, quiet=True)
    release.twine_check([sdist, wheel])
    house = release.wheelhouse(out, wheel)
    return Dists(sdist, wheel, house)
