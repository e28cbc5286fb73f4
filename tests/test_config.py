"""config.ini parsing: one case per kind of invalid config, plus the valid shapes.

Every invalid case asserts that a problem names its section and key: that is
what lets an operator fix the file without guessing.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from fcmon.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
    TargetConfig,
    default_config_path,
    load_config,
    parse_config,
    parse_listen,
    redacted_summary,
)

ENDPOINT = "https://db1.example.com:8443/api"
TARGET = f"""
[target:prod]
endpoint = {ENDPOINT}
"""
SECRET = "S3cr3t-Pa55;word"


def parse(tmp_path: Path, text: str, environ: Optional[Dict[str, str]] = None) -> Config:
    return parse_config(textwrap.dedent(text), tmp_path, environ or {}, source="test.ini")


def problems_of(tmp_path: Path, text: str, environ: Optional[Dict[str, str]] = None) -> List[str]:
    with pytest.raises(ConfigError) as info:
        parse(tmp_path, text, environ)
    problems = info.value.problems
    assert problems, "ConfigError without problems"
    assert str(info.value) == "\n".join(problems)
    return problems


def find(problems: List[str], section: str, key: str, *fragments: str) -> str:
    """The one problem line naming `[section] key` (and each fragment)."""
    hits = [
        p for p in problems
        if f"[{section}] {key}" in p and all(f in p for f in fragments)
    ]
    assert hits, f"no problem names [{section}] {key} {fragments}: {problems}"
    assert all(p.startswith("test.ini: ") for p in problems), problems
    return hits[0]


def only(tmp_path: Path, text: str, section: str, key: str, *fragments: str,
         environ: Optional[Dict[str, str]] = None) -> str:
    """The config has exactly one problem, and it names section and key."""
    problems = problems_of(tmp_path, text, environ)
    assert len(problems) == 1, problems
    return find(problems, section, key, *fragments)


# ---------------------------------------------------------------------------
# Invalid configs, one per test case


@pytest.mark.parametrize(
    "text, section, key, fragments",
    [
        pytest.param(
            TARGET + "pasword_file = pw\n",
            "target:prod", "pasword_file", ("unknown key", "did you mean password_file?"),
            id="unknown-key-target",
        ),
        pytest.param(
            "[fcmon]\nintervall = 30\n" + TARGET,
            "fcmon", "intervall", ("did you mean interval?",),
            id="unknown-key-fcmon",
        ),
        pytest.param(
            "[web]\ntls_cert = x\n" + TARGET,
            "web", "tls_cert", ("did you mean tls_cert_file?",),
            id="unknown-key-web",
        ),
        # A misspelled key is the only problem: the key it meant is not
        # checked against the others with its default value (or as missing).
        pytest.param(
            "[fcmon]\ninterval = 5\ntimout = 3\n" + TARGET,
            "fcmon", "timout", ("did you mean timeout?",),
            id="typo-not-checked-as-default-fcmon",
        ),
        pytest.param(
            TARGET + "interval = 5\ntimout = 3\n",
            "target:prod", "timout", ("did you mean timeout?",),
            id="typo-not-checked-as-default-target",
        ),
        pytest.param(
            "[target:prod]\nendpiont = https://db1.example.com:8443/api\n",
            "target:prod", "endpiont", ("did you mean endpoint?",),
            id="typo-not-reported-missing-endpoint",
        ),
        pytest.param(
            TARGET.replace("https://", "http://") + "allow_insecure_htp = true\n",
            "target:prod", "allow_insecure_htp", ("did you mean allow_insecure_http?",),
            id="typo-not-checked-as-default-insecure",
        ),
        pytest.param(
            TARGET + "usrname = ADMIN\npassword = x\n",
            "target:prod", "usrname", ("did you mean username?",),
            id="typo-not-reported-missing-username",
        ),
        pytest.param(
            TARGET + "client_cert_file = present.key\nclient_key_flie = present.key\n",
            "target:prod", "client_key_flie", ("did you mean client_key_file?",),
            id="typo-not-reported-missing-pair",
        ),
        pytest.param(
            "[web]\ntls_cert_file = present.key\ntls_kye_file = present.key\n" + TARGET,
            "web", "tls_kye_file", ("did you mean tls_key_file?",),
            id="typo-not-reported-missing-pair-web",
        ),
        pytest.param(
            TARGET + "log_level = debug\n",
            "target:prod", "log_level", ("belongs in [fcmon]",),
            id="fcmon-key-in-target",
        ),
        pytest.param(
            "[defaults]\nendpoint = https://x.example.com/api\n" + TARGET,
            "defaults", "endpoint", ("cannot be inherited",),
            id="endpoint-in-defaults",
        ),
        pytest.param(
            "[target:prod]\nusername = ADMIN\n",
            "target:prod", "endpoint", ("missing",),
            id="missing-endpoint",
        ),
        pytest.param(
            "[fcmon]\ninterval = soon\n" + TARGET,
            "fcmon", "interval", ('expected a number of seconds, got "soon"',),
            id="interval-not-a-number",
        ),
        pytest.param(
            "[fcmon]\ninterval = 0\n" + TARGET,
            "fcmon", "interval", ("must be greater than 0",),
            id="interval-zero",
        ),
        pytest.param(
            "[fcmon]\ninterval = -5\n" + TARGET,
            "fcmon", "interval", ("must be greater than 0",),
            id="interval-negative",
        ),
        pytest.param(
            "[fcmon]\ninterval = nan\n" + TARGET,
            "fcmon", "interval", ("must be greater than 0",),
            id="interval-nan",
        ),
        pytest.param(
            TARGET + "interval = every minute\n",
            "target:prod", "interval", ("expected a number",),
            id="interval-not-a-number-target",
        ),
        pytest.param(
            "[fcmon]\ntimeout = 0\n" + TARGET,
            "fcmon", "timeout", ("must be greater than 0",),
            id="timeout-zero",
        ),
        pytest.param(
            "[fcmon]\ninterval = 60\ntimeout = 60\n" + TARGET,
            "fcmon", "timeout", ("must be less than interval (60)",),
            id="timeout-equals-interval-fcmon",
        ),
        pytest.param(
            "[fcmon]\ninterval = 60\ntimeout = 10\n" + TARGET + "interval = 5\n",
            "target:prod", "timeout", ("must be less than interval (5)", "got 10 from [fcmon]"),
            id="timeout-vs-target-interval",
        ),
        pytest.param(
            TARGET + "timeout = 90\n",
            "target:prod", "timeout", ("must be less than interval (60 from [fcmon])", "got 90"),
            id="target-timeout-vs-fcmon-interval",
        ),
        pytest.param(
            "[defaults]\ntimeout = 61\n" + TARGET,
            "defaults", "timeout", ("must be less than interval (60 from [fcmon])",),
            id="timeout-in-defaults",
        ),
        pytest.param(
            "[defaults]\ninterval = 30\n" + TARGET + "timeout = 30\n",
            "target:prod", "timeout", ("must be less than interval (30 from [defaults])",),
            id="timeout-vs-defaults-interval",
        ),
        pytest.param(
            TARGET.replace("https://", "http://"),
            "target:prod", "endpoint", ("http://", "allow_insecure_http = true"),
            id="http-without-allow-insecure",
        ),
        pytest.param(
            "[defaults]\nallow_insecure_http = false\n" + TARGET.replace("https://", "http://"),
            "target:prod", "endpoint", ("allow_insecure_http",),
            id="http-with-allow-insecure-false",
        ),
        pytest.param(
            TARGET.replace("https://", "ftp://"),
            "target:prod", "endpoint", ("expected an https:// URL",),
            id="endpoint-ftp",
        ),
        pytest.param(
            "[target:prod]\nendpoint = db1.example.com:8443\n",
            "target:prod", "endpoint", ("https://",),
            id="endpoint-no-scheme",
        ),
        pytest.param(
            "[target:prod]\nendpoint = https:///api\n",
            "target:prod", "endpoint", ("no host name",),
            id="endpoint-no-host",
        ),
        pytest.param(
            "[target:prod]\nendpoint = https://db1.example.com:99999/api\n",
            "target:prod", "endpoint", ("not a valid URL",),
            id="endpoint-port-out-of-range",
        ),
        pytest.param(
            "[target:prod]\nendpoint = https://db 1.example.com/api\n",
            "target:prod", "endpoint", ("not a host name",),
            id="endpoint-space-in-host",
        ),
        pytest.param(
            "[target:prod]\nendpoint = https://db1.example.com/api?x=1\n",
            "target:prod", "endpoint", ("?query",),
            id="endpoint-query",
        ),
        pytest.param(
            TARGET + "allow_insecure_http = maybe\n",
            "target:prod", "allow_insecure_http", ('expected true or false, got "maybe"',),
            id="bool-invalid",
        ),
        pytest.param(
            TARGET + "session_idle_timeout = 0\n",
            "target:prod", "session_idle_timeout", ("must be at least 1",),
            id="session-idle-timeout-zero",
        ),
        pytest.param(
            TARGET + "session_idle_timeout = 1.5\n",
            "target:prod", "session_idle_timeout", ("whole number",),
            id="session-idle-timeout-float",
        ),
        pytest.param(
            "[defaults]\nmax_response_bytes = 100\n" + TARGET,
            "defaults", "max_response_bytes", ("must be at least 1024",),
            id="max-response-bytes-too-small",
        ),
        pytest.param(
            TARGET + "username = ADMIN\npassword_env = FCMON_TEST_UNSET_VAR\n",
            "target:prod", "password_env", ("FCMON_TEST_UNSET_VAR is not set",),
            id="password-env-unset",
        ),
        pytest.param(
            TARGET + "username = ADMIN\npassword_env = EMPTY\n",
            "target:prod", "password_env", ("EMPTY is empty",),
            id="password-env-empty",
        ),
        pytest.param(
            TARGET + "password = x\n",
            "target:prod", "password", ("given without username",),
            id="password-without-username",
        ),
        pytest.param(
            "[defaults]\npassword = x\n" + TARGET,
            "target:prod", "password", ("given without username", "from [defaults]"),
            id="inherited-password-without-username",
        ),
        pytest.param(
            TARGET + "username = ADMIN\npassword =\n",
            "target:prod", "password", ("empty value",),
            id="empty-value",
        ),
        pytest.param(
            TARGET + "username = ADMIN\npassword_env = A\npassword = x\n",
            "target:prod", "password_env, password", ("give only one of",),
            id="two-password-sources",
        ),
        pytest.param(
            TARGET + "ca_file = missing.crt\n",
            "target:prod", "ca_file", ("missing.crt: No such file or directory",),
            id="missing-ca-file",
        ),
        pytest.param(
            TARGET + "client_cert_file = missing.crt\nclient_key_file = present.key\n",
            "target:prod", "client_cert_file", ("missing.crt: No such file or directory",),
            id="missing-client-cert-file",
        ),
        pytest.param(
            TARGET + "ca_file = .\n",
            "target:prod", "ca_file", ("Is a directory",),
            id="ca-file-is-a-directory",
        ),
        pytest.param(
            TARGET + "ca_file = $CREDENTIALS_DIRECTORY/ca.crt\n",
            "target:prod", "ca_file", ("$CREDENTIALS_DIRECTORY is not set",),
            id="credentials-directory-unset",
        ),
        pytest.param(
            "[fcmon]\nlisten = foo\n" + TARGET,
            "fcmon", "listen", ('expected HOST:PORT, got "foo"',),
            id="listen-no-port",
        ),
        pytest.param(
            "[fcmon]\nlisten = 127.0.0.1:99999\n" + TARGET,
            "fcmon", "listen", ("out of range",),
            id="listen-port-out-of-range",
        ),
        pytest.param(
            "[fcmon]\nlisten = ::1:9731\n" + TARGET,
            "fcmon", "listen", ("needs brackets",),
            id="listen-ipv6-without-brackets",
        ),
        pytest.param(
            "[fcmon]\nlisten = [example]:9731\n" + TARGET,
            "fcmon", "listen", ("not an IPv6 address",),
            id="listen-bracketed-name",
        ),
        pytest.param(
            "[fcmon]\nlisten = :9731\n" + TARGET,
            "fcmon", "listen", ("[::]:PORT",),
            id="listen-empty-host",
        ),
        pytest.param(
            "[fcmon]\nlog_level = verbose\n" + TARGET,
            "fcmon", "log_level", ('got "verbose"', "debug, info, warning, error"),
            id="bad-log-level",
        ),
        pytest.param(
            "[fcmon]\nlog_level = warn\n" + TARGET,
            "fcmon", "log_level", ("did you mean warning?",),
            id="log-level-did-you-mean",
        ),
        pytest.param(
            "[fcmon]\nlog_format = xml\n" + TARGET,
            "fcmon", "log_format", ("text, json",),
            id="bad-log-format",
        ),
        pytest.param(
            "[web]\nbasic_auth_username = prometheus\n" + TARGET,
            "web", "basic_auth_username", ("without basic_auth_password_file",),
            id="web-basic-auth-without-password",
        ),
        pytest.param(
            TARGET + "interval = 30\n  timeout = 5\n",
            "target:prod", "interval", ("several lines",),
            id="indented-line-continues-value",
        ),
        pytest.param(
            TARGET + "endpoint = https://db2.example.com/api\n",
            "target:prod", "endpoint", ("duplicate key", "line 4"),
            id="duplicate-key",
        ),
    ],
)
def test_invalid_config_names_section_and_key(
    tmp_path: Path, text: str, section: str, key: str, fragments: tuple
) -> None:
    (tmp_path / "present.key").write_text("x")
    only(tmp_path, text, section, key, *fragments, environ={"A": "a", "EMPTY": ""})


def test_unknown_section_did_you_mean(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[fcmn]\nlisten = 127.0.0.1:9731\n" + TARGET)
    assert problems == ["test.ini: [fcmn]: unknown section, did you mean [fcmon]?"]


@pytest.mark.parametrize(
    "header, hint",
    [
        ("[Target:prod2]", "did you mean [target:prod2]?"),
        ("[targets:prod2]", "did you mean [target:prod2]?"),
        ("[target prod2]", "did you mean [target:prod2]?"),
        ("[DEFAULT]", "did you mean [defaults]?"),
        ("[server]", "known sections: [fcmon], [web], [defaults], [target:NAME]"),
    ],
)
def test_unknown_section_hints(tmp_path: Path, header: str, hint: str) -> None:
    problems = problems_of(tmp_path, f"{header}\nendpoint = {ENDPOINT}\n" + TARGET)
    assert len(problems) == 1, problems
    assert f"{header}: unknown section" in problems[0]
    assert hint in problems[0]


@pytest.mark.parametrize(
    "text, header",
    [
        # Without [fcmon], interval 300 is not known: the target's timeout is
        # not compared with the default interval 60.
        pytest.param("[fcmn]\ninterval = 300\n" + TARGET + "timeout = 100\n", "[fcmn]", id="fcmon"),
        pytest.param("[defualts]\ninterval = 300\n" + TARGET + "timeout = 100\n", "[defualts]", id="defaults"),
        # A misspelled target header is not also "no [target:NAME] section".
        pytest.param("[targt:prod]\nendpoint = " + ENDPOINT + "\n", "[targt:prod]", id="target"),
    ],
)
def test_misspelled_header_is_the_only_problem(tmp_path: Path, text: str, header: str) -> None:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    assert f"{header}: unknown section, did you mean" in problems[0]


def test_default_section_does_not_leak_into_targets(tmp_path: Path) -> None:
    # configparser's own [DEFAULT] would copy its keys into every section.
    problems = problems_of(tmp_path, "[DEFAULT]\nusername = x\n" + TARGET)
    assert len(problems) == 1 and "[DEFAULT]: unknown section" in problems[0]


@pytest.mark.parametrize("name", ["", "a b", "prod/east", "ü"])
def test_invalid_target_name(tmp_path: Path, name: str) -> None:
    problems = problems_of(tmp_path, f"[target:{name}]\nendpoint = {ENDPOINT}\n")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"test.ini: [target:{name}]: target NAME")


def test_no_target_section(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "[fcmon]\nlisten = 127.0.0.1:9731\n")
    assert problems == [
        "test.ini: no [target:NAME] section: add one for each FairCom server to probe"
    ]


def test_empty_file(tmp_path: Path) -> None:
    assert len(problems_of(tmp_path, "")) == 1


def test_duplicate_section(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, TARGET + TARGET)
    assert problems == [
        "test.ini: [target:prod]: duplicate section (again at line 5): each section may appear once"
    ]


def test_every_duplicate_is_reported(tmp_path: Path) -> None:
    text = (
        "[fcmon]\ninterval = 30\ninterval = 40\ntimeout = 5\ntimeout = 6\n"
        + TARGET + TARGET + "[fcmon]\n"
    )
    problems = problems_of(tmp_path, text)
    assert len(problems) == 4, problems
    find(problems, "fcmon", "interval", "duplicate key")
    find(problems, "fcmon", "timeout", "duplicate key")
    assert sum("duplicate section" in p for p in problems) == 2


def test_syntax_errors_are_problems_not_tracebacks(tmp_path: Path) -> None:
    text = "listen = 127.0.0.1:9731\n" + TARGET + "this line has no equals sign\n"
    problems = problems_of(tmp_path, text)
    assert problems == [
        "test.ini: line 1: expected a [section] header before any key",
        'test.ini: line 5: cannot parse: expected "key = value", a [section] header or a comment',
    ]


@pytest.mark.parametrize(
    "web, key, fragment",
    [
        ("tls_cert_file = web.crt", "tls_cert_file", "given without tls_key_file"),
        ("tls_key_file = web.key", "tls_key_file", "given without tls_cert_file"),
        ("basic_auth_password_file = pw", "basic_auth_password_file", "given without basic_auth_username"),
        ("client_ca_file = ca.crt", "client_ca_file", "needs tls_cert_file"),
    ],
)
def test_web_keys_that_need_each_other(tmp_path: Path, web: str, key: str, fragment: str) -> None:
    for name in ("web.crt", "web.key", "ca.crt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "pw").write_text("secret\n")
    only(tmp_path, f"[web]\n{web}\n" + TARGET, "web", key, fragment)


def test_client_cert_without_key(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("x")
    only(tmp_path, TARGET + "client_cert_file = c.crt\n", "target:prod", "client_cert_file",
         "given without client_key_file")


def test_client_key_password_without_key(tmp_path: Path) -> None:
    only(tmp_path, TARGET + "client_key_password_env = A\n", "target:prod",
         "client_key_password_env", "given without client_key_file", environ={"A": "x"})


def test_two_client_key_password_sources(tmp_path: Path) -> None:
    for name in ("c.crt", "c.key", "kp"):
        (tmp_path / name).write_text("x")
    text = TARGET + (
        "client_cert_file = c.crt\nclient_key_file = c.key\n"
        "client_key_password_file = kp\nclient_key_password_env = A\n"
    )
    only(tmp_path, text, "target:prod", "client_key_password_file, client_key_password_env",
         "give only one", environ={"A": "x"})


def test_missing_cert_file_names_absolute_path(tmp_path: Path) -> None:
    line = only(tmp_path, TARGET + "ca_file = certs/ca.crt\n", "target:prod", "ca_file")
    assert line == (
        f"test.ini: [target:prod] ca_file: {tmp_path / 'certs' / 'ca.crt'}: No such file or directory"
    )


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory where a file is expected: unreadable even for root, who
    # reads every mode-0 file (CI runs as root).
    (tmp_path / "ca.crt").mkdir()
    only(tmp_path, TARGET + "ca_file = ca.crt\n", "target:prod", "ca_file", "Is a directory")


def test_password_file_problems_do_not_quote_it(tmp_path: Path) -> None:
    (tmp_path / "two-lines").write_text(f"{SECRET}\nsecond line\n")
    (tmp_path / "empty").write_text("\n")
    text = (
        "[target:a]\nendpoint = https://a.example.com/api\nusername = u\npassword_file = two-lines\n"
        "[target:b]\nendpoint = https://b.example.com/api\nusername = u\npassword_file = empty\n"
    )
    problems = problems_of(tmp_path, text)
    find(problems, "target:a", "password_file", "several lines")
    find(problems, "target:b", "password_file", "file is empty")
    assert SECRET not in "\n".join(problems)
    assert "second line" not in "\n".join(problems)


def test_many_problems_reported_at_once(tmp_path: Path) -> None:
    text = """
        [fcmon]
        listen = foo
        interval = soon
        log_level = loud

        [web]
        tls_cert_file = web.crt

        [target:prod]
        endpoint = http://db1.example.com:8080/api
        pasword_file = x
        ca_file = nowhere.crt
        timeout = 0

        [target:qa]
        username = ADMIN
        password_env = UNSET_VAR

        [bogus]
    """
    problems = problems_of(tmp_path, text)
    find(problems, "fcmon", "listen")
    find(problems, "fcmon", "interval")
    find(problems, "fcmon", "log_level")
    find(problems, "web", "tls_cert_file", "No such file")
    find(problems, "web", "tls_cert_file", "given without tls_key_file")
    find(problems, "target:prod", "endpoint", "allow_insecure_http")
    find(problems, "target:prod", "pasword_file", "did you mean password_file?")
    find(problems, "target:prod", "ca_file", "No such file")
    find(problems, "target:prod", "timeout", "greater than 0")
    find(problems, "target:qa", "endpoint", "missing")
    find(problems, "target:qa", "password_env", "UNSET_VAR")
    assert any("[bogus]: unknown section" in p for p in problems)
    assert len(problems) == 12, problems


# ---------------------------------------------------------------------------
# Valid configs


def test_minimal_config_defaults(tmp_path: Path) -> None:
    config = parse(tmp_path, TARGET)
    assert config == Config(targets=(TargetConfig(name="prod", endpoint=ENDPOINT),))
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9731)
    target = config.targets[0]
    assert target.session_idle_timeout == 300
    assert target.max_response_bytes == 1048576
    assert target.username is None and target.password is None
    assert target.ca_file is None


def test_full_config(tmp_path: Path) -> None:
    for name in ("web.crt", "web.key", "scrapers.crt", "ca.crt", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "web.pw").write_text("webpw\n")
    text = """
        ; comment
        [fcmon]
        listen = 0.0.0.0:9100   ; all IPv4 addresses
        interval = 0.5          # fractional seconds
        timeout = 0.25
        log_level = DEBUG
        log_format = json

        [web]
        tls_cert_file = web.crt
        tls_key_file = web.key
        client_ca_file = scrapers.crt
        basic_auth_username = prometheus
        basic_auth_password_file = web.pw

        [target:db-1.east:8443]
        Endpoint = https://[2001:db8::1]:8443/api
        username = ADMIN
        password = ADMIN
        ca_file = ca.crt
        client_cert_file = c.crt
        client_key_file = c.key
        allow_insecure_http = yes
        session_idle_timeout = 60
        max_response_bytes = 1024
    """
    config = parse(tmp_path, text)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9100)
    assert (config.interval, config.timeout) == (0.5, 0.25)
    assert (config.log_level, config.log_format) == ("debug", "json")
    assert config.web.tls_cert_file == tmp_path / "web.crt"
    assert config.web.tls_key_file == tmp_path / "web.key"
    assert config.web.client_ca_file == tmp_path / "scrapers.crt"
    assert config.web.basic_auth_username == "prometheus"
    assert config.web.basic_auth_password == "webpw"
    (t,) = config.targets
    assert t == TargetConfig(
        name="db-1.east:8443",
        endpoint="https://[2001:db8::1]:8443/api",
        username="ADMIN",
        password="ADMIN",
        ca_file=tmp_path / "ca.crt",
        client_cert_file=tmp_path / "c.crt",
        client_key_file=tmp_path / "c.key",
        interval=0.5,
        timeout=0.25,
        allow_insecure_http=True,
        session_idle_timeout=60,
        max_response_bytes=1024,
    )


def test_http_allowed_when_target_says_so(tmp_path: Path) -> None:
    config = parse(tmp_path, TARGET.replace("https://", "http://") + "allow_insecure_http = true\n")
    assert config.targets[0].endpoint.startswith("http://")
    assert config.targets[0].allow_insecure_http is True


def test_defaults_are_inherited(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "other-ca.crt").write_text("x")
    (tmp_path / "shared.pw").write_text("shared\n")
    text = """
        [fcmon]
        interval = 120
        timeout = 20

        [defaults]
        ca_file = ca.crt
        username = MONITOR
        password_file = shared.pw
        interval = 30
        session_idle_timeout = 90

        [target:a]
        endpoint = https://a.example.com:8443/api

        [target:b]
        endpoint = https://b.example.com:8443/api
        ca_file = other-ca.crt
        password_env = B_PASSWORD
        timeout = 3
        max_response_bytes = 4096
    """
    config = parse(tmp_path, text, {"B_PASSWORD": "from-env"})
    a, b = config.targets
    assert (config.interval, config.timeout) == (120, 20)
    assert a.ca_file == tmp_path / "ca.crt"
    assert (a.username, a.password) == ("MONITOR", "shared")
    assert (a.interval, a.timeout) == (30, 20)
    assert (a.session_idle_timeout, a.max_response_bytes) == (90, 1048576)
    assert b.ca_file == tmp_path / "other-ca.crt"
    # The target's own password source replaces [defaults]' one: no "two sources" error.
    assert (b.username, b.password) == ("MONITOR", "from-env")
    assert (b.interval, b.timeout) == (30, 3)
    assert (b.session_idle_timeout, b.max_response_bytes) == (90, 4096)


def test_fcmon_interval_and_timeout_are_target_defaults(tmp_path: Path) -> None:
    config = parse(tmp_path, "[fcmon]\ninterval = 15\ntimeout = 4\n" + TARGET)
    assert (config.targets[0].interval, config.targets[0].timeout) == (15, 4)


def test_client_certificate_group_is_inherited_as_a_whole(tmp_path: Path) -> None:
    for name in ("d.crt", "d.key", "t.crt", "t.key"):
        (tmp_path / name).write_text("x")
    text = """
        [defaults]
        client_cert_file = d.crt
        client_key_file = d.key
        client_key_password_env = KEY_PW

        [target:inherits]
        endpoint = https://a.example.com/api

        [target:own]
        endpoint = https://b.example.com/api
        client_cert_file = t.crt
        client_key_file = t.key
    """
    inherits, own = parse(tmp_path, text, {"KEY_PW": "kp"}).targets
    assert (inherits.client_cert_file, inherits.client_key_file) == (tmp_path / "d.crt", tmp_path / "d.key")
    assert inherits.client_key_password == "kp"
    assert (own.client_cert_file, own.client_key_file) == (tmp_path / "t.crt", tmp_path / "t.key")
    # [defaults]' key password belongs to [defaults]' key.
    assert own.client_key_password is None


def test_relative_paths_resolve_against_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc" / "fcmon"
    (etc / "certs").mkdir(parents=True)
    (etc / "certs" / "ca.crt").write_text("x")
    (etc / "prod.password").write_text("pw\n")
    (etc / "config.ini").write_text(
        TARGET + "ca_file = certs/ca.crt\nusername = ADMIN\npassword_file = prod.password\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "certs").mkdir()  # a decoy the cwd would find
    (elsewhere / "certs" / "ca.crt").write_text("decoy")
    monkeypatch.chdir(elsewhere)

    config = load_config(os.path.relpath(etc / "config.ini"), environ={})
    assert config.path == etc / "config.ini"
    assert config.path.is_absolute()
    assert config.targets[0].ca_file == etc / "certs" / "ca.crt"
    assert config.targets[0].password == "pw"


@pytest.mark.parametrize("prefix", ["$CREDENTIALS_DIRECTORY", "${CREDENTIALS_DIRECTORY}"])
def test_credentials_directory_expansion(tmp_path: Path, prefix: str) -> None:
    creds = tmp_path / "run" / "credentials" / "fcmon.service"
    creds.mkdir(parents=True)
    (creds / "prod.password").write_text("from-systemd\n")
    (creds / "client.key").write_text("x")
    (creds / "client.crt").write_text("x")
    text = TARGET + (
        f"username = ADMIN\npassword_file = {prefix}/prod.password\n"
        f"client_cert_file = {prefix}/client.crt\nclient_key_file = {prefix}/client.key\n"
    )
    config = parse(tmp_path / "not-here", text, {"CREDENTIALS_DIRECTORY": str(creds)})
    t = config.targets[0]
    assert t.password == "from-systemd"
    assert t.client_key_file == creds / "client.key"
    assert t.client_cert_file == creds / "client.crt"


@pytest.mark.parametrize(
    "content, password",
    [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw", "pw"),
        ("pw\n\n", "pw"),
        (" spaced pw \n", " spaced pw "),  # only line endings are stripped
    ],
)
def test_password_file_line_ending_stripped(tmp_path: Path, content: str, password: str) -> None:
    (tmp_path / "pw").write_bytes(content.encode())
    config = parse(tmp_path, TARGET + "username = ADMIN\npassword_file = pw\n")
    assert config.targets[0].password == password


def test_password_with_semicolon_inline(tmp_path: Path) -> None:
    # An inline comment needs whitespace before it, so ; inside a value stays.
    config = parse(tmp_path, TARGET + "username = ADMIN\npassword = a;b#c ; the comment\n")
    assert config.targets[0].password == "a;b#c"


@pytest.mark.parametrize(
    "listen, host, port",
    [
        ("[::]:9731", "::", 9731),
        ("[::1]:0", "::1", 0),
        ("[2001:db8::5]:65535", "2001:db8::5", 65535),
        ("127.0.0.1:9731", "127.0.0.1", 9731),
        ("localhost:8080", "localhost", 8080),
    ],
)
def test_listen(tmp_path: Path, listen: str, host: str, port: int) -> None:
    config = parse(tmp_path, f"[fcmon]\nlisten = {listen}\n" + TARGET)
    assert (config.listen_host, config.listen_port) == (host, port)
    assert parse_listen(listen) == (host, port)


def test_target_order_is_file_order(tmp_path: Path) -> None:
    text = "".join(
        f"[target:{n}]\nendpoint = https://{n}.example.com/api\n" for n in ("z", "a", "m")
    )
    assert [t.name for t in parse(tmp_path, text).targets] == ["z", "a", "m"]


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.ini", environ={})
    assert info.value.problems == [
        f"{tmp_path / 'nope.ini'}: cannot read config: No such file or directory"
    ]


def test_load_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, environ={})
    assert "cannot read config" in str(info.value)


def test_load_config_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_bytes(b"[target:prod]\nendpoint = https://\xff/api\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path, environ={})


def test_load_config_problems_start_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_text("[target:prod]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        f"{path}: [target:prod] endpoint: missing: the JSON DB API URL, "
        "such as https://db1.example.com:8443/api"
    ]


def test_load_config_accepts_bom(tmp_path: Path) -> None:
    path = tmp_path / "config.ini"
    path.write_bytes(b"\xef\xbb\xbf" + TARGET.lstrip().encode())
    assert load_config(path, environ={}).targets[0].name == "prod"


def test_default_config_path() -> None:
    assert default_config_path({}) == DEFAULT_CONFIG_PATH == "/etc/fcmon/config.ini"
    assert default_config_path({"FCMON_CONFIG": ""}) == DEFAULT_CONFIG_PATH
    assert default_config_path({"FCMON_CONFIG": "/srv/fcmon.ini"}) == "/srv/fcmon.ini"


def test_example_config_parses(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / "config.ini"
    if not example.exists():
        pytest.skip("config.ini not written yet")
    # Absolute paths in the example point at the install location.
    text = example.read_text().replace("/etc/fcmon/", f"{tmp_path}/etc/fcmon/")
    creds = tmp_path / "credentials"
    creds.mkdir()
    environ = {"CREDENTIALS_DIRECTORY": str(creds)}
    # The example names certificates and password files that exist only on a
    # real host: create each one it asks for under tmp_path, then it must parse.
    missing = re.compile(r"\] \w+: (/.+): No such file or directory$")
    for _attempt in range(20):
        try:
            config = parse_config(text, tmp_path, environ, source=str(example))
            break
        except ConfigError as exc:
            paths = [Path(m.group(1)) for m in map(missing.search, exc.problems) if m]
            local = [p for p in paths if tmp_path in p.parents]
            assert local and len(paths) == len(exc.problems), exc.problems
            for path in local:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("placeholder\n")
    else:
        pytest.fail("example config never parsed")
    assert config.targets
    assert all(t.endpoint.startswith("https://") for t in config.targets)


# ---------------------------------------------------------------------------
# Secrets


def _secret_configs(tmp_path: Path) -> Dict[str, tuple]:
    (tmp_path / "pw").write_text(SECRET + "\n")
    return {
        "password_file": ("password_file = pw\n", {}),
        "password_env": ("password_env = PW\n", {"PW": SECRET}),
        "password": (f"password = {SECRET}\n", {}),
    }


@pytest.mark.parametrize("source", ["password_file", "password_env", "password"])
def test_password_never_in_repr_or_summary(tmp_path: Path, source: str) -> None:
    line, environ = _secret_configs(tmp_path)[source]
    config = parse(tmp_path, TARGET + "username = ADMIN\n" + line, environ)
    password = config.targets[0].password
    assert password == SECRET
    for text in (repr(config), str(config), repr(config.targets[0]), "\n".join(redacted_summary(config))):
        assert password not in text
    assert "  password: <redacted>" in redacted_summary(config)


@pytest.mark.parametrize("source", ["password_file", "password_env", "password"])
def test_password_never_in_config_errors(tmp_path: Path, source: str) -> None:
    line, environ = _secret_configs(tmp_path)[source]
    # Invalid around the password: no username, bad neighbours, a second source.
    text = TARGET + line + "timeout = soon\npassword_env = ALSO\n" + f"{SECRET}\n"
    problems = problems_of(tmp_path, text, environ)
    find(problems, "target:prod", "timeout")
    joined = "\n".join(problems)
    assert SECRET not in joined
    assert SECRET.split(";")[0] not in joined


def test_password_in_endpoint_userinfo_not_echoed(tmp_path: Path) -> None:
    line = only(tmp_path, f"[target:prod]\nendpoint = https://ADMIN:{SECRET[:8]}@db1.example.com/api\n",
                "target:prod", "endpoint", "user:password@")
    assert SECRET[:8] not in line


def test_summary_redacts_every_secret(tmp_path: Path) -> None:
    for name in ("web.crt", "web.key", "c.crt", "c.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "web.pw").write_text("web-" + SECRET)
    text = f"""
        [web]
        tls_cert_file = web.crt
        tls_key_file = web.key
        basic_auth_username = prometheus
        basic_auth_password_file = web.pw

        [target:prod]
        endpoint = {ENDPOINT}
        username = ADMIN
        password_env = PW
        client_cert_file = c.crt
        client_key_file = c.key
        client_key_password_env = KEY_PW

        [target:certonly]
        endpoint = https://db1.example.com:8444/api
    """
    config = parse(tmp_path, text, {"PW": "pw-" + SECRET, "KEY_PW": "key-" + SECRET})
    summary = redacted_summary(config)
    everything = "\n".join(summary) + repr(config)
    for secret in ("web-", "pw-", "key-"):
        assert secret + SECRET not in everything
    assert SECRET not in everything
    assert "  basic_auth_password: <redacted>" in summary
    assert "  client_key_password: <redacted>" in summary
    assert "  password: <none>" in summary  # certonly
    assert "[target:certonly]" in summary
    assert f"  endpoint: {ENDPOINT}" in summary


def test_web_connection_keys(tmp_path: Path) -> None:
    config = parse(tmp_path, "[web]\nmax_connections_per_client = 50\n"
                             "allowed_hosts = fcmon.example.com, *.mon.example.com FCMON2.example.com.\n" + TARGET)
    assert config.web.max_connections_per_client == 50
    assert config.web.allowed_hosts == ("fcmon.example.com", "*.mon.example.com", "fcmon2.example.com")
    default = parse(tmp_path, TARGET)
    assert default.web.max_connections_per_client == 1024 and default.web.allowed_hosts is None
    only(tmp_path, "[web]\nmax_connections_per_client = 0\n" + TARGET, "web", "max_connections_per_client",
         "at least 1")
    only(tmp_path, "[web]\nallowed_hosts = fcmon.example.com, bad/name\n" + TARGET, "web", "allowed_hosts",
         "expected host names")
    only(tmp_path, "[web]\nalowed_hosts = x\n" + TARGET, "web", "alowed_hosts", "allowed_hosts")
