"""The key table (fcmon/config.py KEYS) is the one description of the config:
every key has a parser, its sections and its default there, the dataclasses
take their defaults from it, and README's Configuration section and
config.ini describe exactly its keys."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from fcmon.config import (
    DEFAULTS,
    FCMON,
    KEYS,
    SECRET_FILE_KEYS,
    TARGET,
    WEB,
    Config,
    ConfigError,
    Key,
    KeyTable,
    TargetConfig,
    WebConfig,
    parse_config,
)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_INI = ROOT / "config.ini"

#: Fields no key fills: the parsed sections, the target's name from its
#: header, the file the config was read from.
STRUCTURAL = {Config: {"web", "targets", "path"}, WebConfig: set(), TargetConfig: {"name"}}
#: The dataclass each section kind fills.
FILLS = {FCMON: Config, WEB: WebConfig, TARGET: TargetConfig}
ENDPOINT = "https://db1.example.com:8443/api"


def _parse(text: str, tmp_path: Path) -> Config:
    return parse_config(textwrap.dedent(text), tmp_path, {}, source="test.ini")


def _readme_rows() -> Dict[str, Tuple[str, str]]:
    """key -> (sections cell, default cell) of README's Configuration table."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \| ([^|]+) \| [^|]+ \|$", section, re.M)
    return {key: (sections.strip(), default.strip()) for key, sections, default in rows}


def _ini(key: Key, value: str) -> str:
    """A config writing `key = value` in the first section the key may be written in."""
    if key.sections[0] == FCMON:
        return f"[fcmon]\n{key.name} = {value}\n[target:t]\nendpoint = {ENDPOINT}\n"
    if key.sections[0] == WEB:
        return f"[web]\n{key.name} = {value}\n[target:t]\nendpoint = {ENDPOINT}\n"
    return f"[target:t]\nendpoint = {ENDPOINT}\n{key.name} = {value}\n"


# -- the table itself


def test_a_key_without_a_parser_cannot_exist() -> None:
    with pytest.raises(TypeError, match="no parser"):
        Key("ghost", None, (FCMON,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Key("ghost", sections=(FCMON,))  # type: ignore[call-arg]
    # one that lost its parser after it was built, or is not a Key at all
    ghost = Key("ghost", lambda ctx, section, key, value: value, (FCMON,))
    object.__setattr__(ghost, "parse", None)
    with pytest.raises(TypeError, match="not a config key with a parser"):
        KeyTable(ghost)
    with pytest.raises(TypeError, match="not a config key with a parser"):
        KeyTable(("ghost", int, (FCMON,)))  # type: ignore[arg-type]


def test_the_table_refuses_a_key_twice_or_in_no_known_section() -> None:
    parse = KEYS["interval"].parse
    with pytest.raises(ValueError, match="twice"):
        KeyTable(Key("x", parse, (FCMON,)), Key("x", parse, (WEB,)))
    for sections in ((), ("target",), (DEFAULTS,)):
        with pytest.raises(ValueError):
            Key("x", parse, sections)


def test_every_dataclass_field_maps_to_a_key_and_every_key_to_a_field() -> None:
    for kind, cls in FILLS.items():
        filled = {f for key in KEYS if kind in key.sections for f in key.fields}
        fields = {f.name for f in dataclasses.fields(cls)}
        assert sorted(fields - filled - STRUCTURAL[cls]) == [], f"{cls.__name__} fields no key fills"
        assert sorted(filled - fields) == [], f"keys fill fields {cls.__name__} lacks"


def test_the_dataclass_defaults_are_the_tables() -> None:
    for cls in FILLS.values():
        for f in dataclasses.fields(cls):
            if f.name in STRUCTURAL[cls]:
                continue
            assert f.default is not dataclasses.MISSING or f.name == "endpoint", f.name
            if f.default is not dataclasses.MISSING:
                assert f.default == KEYS.field_default(f.name), (cls.__name__, f.name)
    # interval and timeout: one default for [fcmon] and a target built without a config
    assert Config().interval == TargetConfig("t", ENDPOINT).interval == KEYS["interval"].default


def test_secrets_stay_out_of_reprs() -> None:
    secret_fields = {f for key in KEYS if key.secret for f in key.fields}
    assert secret_fields == {"password", "client_key_password", "basic_auth_password"}
    for cls in FILLS.values():
        for f in dataclasses.fields(cls):
            assert f.repr == (f.name not in secret_fields), (cls.__name__, f.name)
    assert set(SECRET_FILE_KEYS) == {"password_file", "client_key_password_file", "basic_auth_password_file"}


def test_a_key_is_accepted_only_in_its_sections(tmp_path: Path) -> None:
    homes = {FCMON: "[fcmon]", WEB: "[web]", DEFAULTS: "[defaults]", TARGET: "[target:t]"}
    for key in KEYS:
        for kind, header in homes.items():
            if kind in key.sections:
                continue
            text = f"{header}\n{key.name} = x\n"
            if kind != TARGET:
                text += f"[target:t]\nendpoint = {ENDPOINT}\n"
            with pytest.raises(ConfigError) as err:
                _parse(text, tmp_path)
            where = "target:t" if kind == TARGET else kind
            assert any(p.startswith(f"test.ini: [{where}] {key.name}: unknown key") for p in err.value.problems), \
                (key.name, kind, err.value.problems)


# -- the documentation


def test_readme_lists_every_key_with_its_sections() -> None:
    rows = _readme_rows()
    assert sorted(rows) == sorted(k.name for k in KEYS), "README's key table and fcmon/config.py KEYS differ"
    shown = {FCMON: "[fcmon]", WEB: "[web]", DEFAULTS: "[defaults]", TARGET: "[target:NAME]"}
    for key in KEYS:
        sections = set(re.findall(r"\[[a-z:A-Z]+\]", rows[key.name][0]))
        assert sections == {shown[s] for s in key.sections}, key.name


def test_readme_defaults_are_the_tables(tmp_path: Path) -> None:
    """A default README writes as a value, written in config.ini, changes nothing;
    a key without a value default is described in words."""
    rows = _readme_rows()
    for key in KEYS:
        cell = rows[key.name][1]
        if key.default in (None, ()):
            assert not re.fullmatch(r"`[^`]+`", cell), f"{key.name}: no default value, README shows {cell}"
            continue
        m = re.fullmatch(r"`([^`]+)`", cell)
        assert m, f"{key.name}: README shows {cell!r} for the default {key.default!r}"
        with_default = _parse(_ini(key, m.group(1)), tmp_path)
        without = _parse(f"[target:t]\nendpoint = {ENDPOINT}\n", tmp_path)
        assert with_default == without, key.name


def test_config_ini_names_every_key() -> None:
    text = CONFIG_INI.read_text()
    written = set(re.findall(r"^;?\s*([a-z_]+)\s*=", text, re.M))
    assert sorted(k.name for k in KEYS if k.name not in written) == [], "keys config.ini does not show"
    assert sorted(written - {k.name for k in KEYS}) == [], "config.ini shows keys fcmon does not know"


def test_config_ini_fcmon_section_shows_the_defaults(tmp_path: Path) -> None:
    """config.ini's [fcmon] values are the defaults it says they are."""
    fcmon = CONFIG_INI.read_text().split("[fcmon]\n", 1)[1].split("\n[", 1)[0]
    lines = re.findall(r"^([a-z_]+ = .*)$", fcmon, re.M)
    assert len(lines) >= 8
    text = "[fcmon]\n" + "\n".join(lines) + f"\n[target:t]\nendpoint = {ENDPOINT}\n"
    assert _parse(text, tmp_path) == Config(targets=(TargetConfig("t", ENDPOINT),))


def test_a_parsed_default_config_equals_the_dataclass_defaults(tmp_path: Path) -> None:
    """Nothing given: every value is the table's default, for [fcmon], [web] and a target."""
    config = _parse(f"[target:t]\nendpoint = {ENDPOINT}\n", tmp_path)
    assert config == Config(targets=(TargetConfig("t", ENDPOINT),))
    values: Dict[str, Any] = {f.name: getattr(config, f.name) for f in dataclasses.fields(Config)}
    assert (values["listen_host"], values["listen_port"]) == KEYS["listen"].default
