"""config.ini: listeners, listeners_discover, listener_interval."""

from __future__ import annotations

from pathlib import Path

import pytest

from fcmon.config import ConfigError, parse_config, redacted_summary

HEAD = "[target:a]\nendpoint = https://db1.example.com:8443/api\n"


def parse(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, Path("."), {})


def problems(text: str) -> list:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.problems


def test_default_is_auto_every_600_seconds() -> None:
    t = parse(HEAD).targets[0]
    assert (t.listeners_mode, t.listeners, t.listener_interval) == ("auto", (), 600.0)
    assert t.checks_listeners and t.discovers_listeners


def test_none_and_lists() -> None:
    t = parse(HEAD + "listeners = None\n").targets[0]
    assert not t.checks_listeners and not t.discovers_listeners
    t = parse(HEAD + "listeners = mqtts:8883, wss:9002\n").targets[0]
    assert t.listeners == (("mqtts", 8883), ("wss", 9002)) and t.discovers_listeners
    t = parse(HEAD + "listeners = mqtts:8883\nlisteners_discover = false\n").targets[0]
    assert t.listeners == (("mqtts", 8883),) and t.checks_listeners and not t.discovers_listeners


def test_inherited_from_defaults() -> None:
    text = "[defaults]\nlisteners = none\nlistener_interval = 900\n" + HEAD + "[target:b]\nendpoint = https://b:1/api\nlisteners = auto\n"
    a, b = parse(text).targets
    assert (a.listeners_mode, a.listener_interval) == ("none", 900.0)
    assert (b.listeners_mode, b.listener_interval) == ("auto", 900.0)


def test_every_problem_at_once() -> None:
    found = problems(HEAD + "listeners = mqtts, x:0, y:70000, ok:1, ok:2, z:1\nlistener_interval = soon\n"
                     "[target:b]\nendpoint = https://b:1/api\nlisteners_discover = false\nlistener_interval = 5\n")
    text = "\n".join(found)
    assert '"mqtts" is not NAME:PORT' in text and '"x:0"' in text and '"y:70000"' in text
    assert '"ok" is named twice' in text and "port 1 is listed twice" in text
    assert "[target:a] listener_interval: expected a number of seconds" in text
    assert "[target:b] listeners_discover: false needs a NAME:PORT list" in text
    assert "[target:b] listener_interval: must be greater than timeout (10), got 5" in text
    assert len(found) == 8, found


def test_unknown_key_gets_a_hint() -> None:
    assert any("did you mean listeners?" in p for p in problems(HEAD + "listener = auto\n"))


def test_summary_names_the_listeners() -> None:
    config = parse(HEAD + "listeners = mqtts:8883\n")
    assert "  listeners: discovered with listServices + mqtts:8883, every 600s" in redacted_summary(config)
