"""`fcmon validate`: real certificates and keys from fcmon.pki, good and broken."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from fcmon import pki
from fcmon.commands.validate import validate

KEY_PASSWORD = "k3y-Pa55phrase"
PASSWORD = "db-Pa55word"


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.ini"
    path.write_text(body)
    return path


def target(ca: str = "ca.crt", cert: str = "client.crt", key: str = "client.key", extra: str = "") -> str:
    return (
        "[target:prod]\n"
        "endpoint = https://localhost:8443/api\n"
        "username = ADMIN\n"
        "password_env = DB_PASSWORD\n"
        f"ca_file = {ca}\n"
        f"client_cert_file = {cert}\n"
        f"client_key_file = {key}\n"
        f"{extra}"
    )


def run(tmp_path: Path, body: str, environ: Optional[Dict[str, str]] = None) -> Tuple[List[str], List[str]]:
    env = {"DB_PASSWORD": PASSWORD}
    env.update(environ or {})
    return validate(write_config(tmp_path, body), env)


def named(problems: List[str], section: str, key: str, *fragments: str) -> str:
    hits = [p for p in problems if f"[{section}] {key}:" in p and all(f in p for f in fragments)]
    assert hits, f"no problem names [{section}] {key} {fragments}: {problems}"
    return hits[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> pki.DemoPKI:
    return pki.write_demo_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def pkidir(tmp_path: Path, demo: pki.DemoPKI) -> Path:
    """The demo PKI copied next to the config, so relative names work."""
    for src, name in (
        (demo.ca_file, "ca.crt"),
        (demo.client.cert, "client.crt"),
        (demo.client.key, "client.key"),
        (demo.server.cert, "server.crt"),
        (demo.server.key, "server.key"),
    ):
        (tmp_path / name).write_bytes(src.read_bytes())
        if name.endswith(".key"):
            (tmp_path / name).chmod(0o600)  # as an operator keeps them (a readable one is a warning)
    return tmp_path


def test_valid_config_has_no_problems(pkidir: Path) -> None:
    web = (
        "[web]\ntls_cert_file = server.crt\ntls_key_file = server.key\n"
        "client_ca_file = ca.crt\nbasic_auth_username = prometheus\n"
        "basic_auth_password_file = web.pw\n"
    )
    (pkidir / "web.pw").write_text("web-" + PASSWORD + "\n")
    (pkidir / "web.pw").chmod(0o600)
    summary, problems = run(pkidir, web + target())
    assert problems == []
    text = "\n".join(summary)
    assert f"config: {pkidir / 'config.ini'}" in summary
    assert "certificates:" in summary
    assert "[target:prod] client_cert_file:" in text and "key matches" in text
    assert "[web] tls_cert_file:" in text
    assert "[web] client_ca_file:" in text
    assert "[target:prod] ca_file:" in text and "CN=fcmon test CA" in text
    assert not [line for line in summary if line.startswith("warning:")]
    assert PASSWORD not in text


def test_valid_target_alone_has_no_problems(pkidir: Path) -> None:
    # (was validate_files on the loaded config, a wrapper only this test used)
    _, problems = run(pkidir, target())
    assert problems == []


def test_key_not_matching_its_certificate(pkidir: Path) -> None:
    ca = pki.make_ca()
    pki.make_client(ca).write(pkidir, "other")
    _, problems = run(pkidir, target(key="other.key"))
    assert len(problems) == 1, problems
    line = named(problems, "target:prod", "client_key_file", "does not match")
    assert str(pkidir / "other.key") in line and str(pkidir / "client.crt") in line
    assert line.startswith(f"{pkidir / 'config.ini'}: ")


def test_web_key_not_matching_its_certificate(pkidir: Path) -> None:
    body = "[web]\ntls_cert_file = server.crt\ntls_key_file = client.key\n" + target()
    _, problems = run(pkidir, body)
    assert len(problems) == 1, problems
    named(problems, "web", "tls_key_file", "does not match", "server.crt")


def test_ca_file_without_certificate(pkidir: Path) -> None:
    (pkidir / "empty-ca.crt").write_text("# certificates go here\n")
    _, problems = run(pkidir, target(ca="empty-ca.crt"))
    assert len(problems) == 1, problems
    named(problems, "target:prod", "ca_file", "no PEM certificate found")


def test_web_client_ca_file_without_certificate(pkidir: Path) -> None:
    (pkidir / "scrapers.crt").write_text("")
    body = "[web]\ntls_cert_file = server.crt\ntls_key_file = server.key\nclient_ca_file = scrapers.crt\n"
    _, problems = run(pkidir, body + target())
    assert len(problems) == 1, problems
    named(problems, "web", "client_ca_file", "no PEM certificate found")


def test_client_cert_file_holding_a_key(pkidir: Path) -> None:
    _, problems = run(pkidir, target(cert="client.key"))
    assert len(problems) == 1, problems
    named(problems, "target:prod", "client_cert_file", "no PEM certificate found")


def test_client_key_file_holding_a_certificate(pkidir: Path) -> None:
    _, problems = run(pkidir, target(key="client.crt"))
    assert len(problems) == 1, problems
    named(problems, "target:prod", "client_key_file", "not a PEM private key")


@pytest.fixture
def encrypted(pkidir: Path) -> Path:
    ca = pki.make_ca()
    (pkidir / "ca.crt").write_bytes(ca.cert_pem)
    pki.make_client(ca).write(pkidir, "enc", key_password=KEY_PASSWORD.encode())
    (pkidir / "key.pw").write_text(KEY_PASSWORD + "\n")
    return pkidir


def test_encrypted_key_with_right_password(encrypted: Path) -> None:
    body = target(cert="enc.crt", key="enc.key", extra="client_key_password_file = key.pw\n")
    summary, problems = run(encrypted, body)
    assert problems == []
    assert "key matches" in "\n".join(summary)
    assert KEY_PASSWORD not in "\n".join(summary)


def test_encrypted_key_with_wrong_password(encrypted: Path) -> None:
    body = target(cert="enc.crt", key="enc.key", extra="client_key_password_env = KEY_PW\n")
    summary, problems = run(encrypted, body, {"KEY_PW": "wrong-" + KEY_PASSWORD})
    assert len(problems) == 1, problems
    named(problems, "target:prod", "client_key_file", "password is wrong")
    assert KEY_PASSWORD not in "\n".join(summary + problems)


def test_encrypted_key_without_password(encrypted: Path) -> None:
    _, problems = run(encrypted, target(cert="enc.crt", key="enc.key"))
    assert len(problems) == 1, problems
    named(problems, "target:prod", "client_key_file", "encrypted")


def test_password_for_unencrypted_key(pkidir: Path) -> None:
    body = target(extra="client_key_password_env = KEY_PW\n")
    _, problems = run(pkidir, body, {"KEY_PW": KEY_PASSWORD})
    assert len(problems) == 1, problems
    named(problems, "target:prod", "client_key_file", "not encrypted")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_expired_certificate_is_a_warning_not_a_problem(pkidir: Path) -> None:
    ca = pki.make_ca()
    (pkidir / "ca.crt").write_bytes(ca.cert_pem)
    pki.make_client(ca, days=1, not_before=_now() - dt.timedelta(days=10)).write(pkidir, "old")
    summary, problems = run(pkidir, target(cert="old.crt", key="old.key"))
    assert problems == []
    warnings = [line for line in summary if line.startswith("warning:")]
    assert len(warnings) == 1, summary
    assert "[target:prod] client_cert_file:" in warnings[0]
    assert "CN=ADMIN" in warnings[0] and "expired" in warnings[0] and "days ago" in warnings[0]


def test_not_yet_valid_ca_is_a_warning(pkidir: Path) -> None:
    future = pki.make_ca(not_before=_now() + dt.timedelta(days=2))
    (pkidir / "future-ca.crt").write_bytes(future.cert_pem)
    summary, problems = run(pkidir, target(ca="future-ca.crt"))
    assert problems == []
    warnings = [line for line in summary if line.startswith("warning:")]
    assert len(warnings) == 1, summary
    assert "[target:prod] ca_file:" in warnings[0] and "not valid until" in warnings[0]


def test_shared_file_is_reported_once_naming_every_section(pkidir: Path) -> None:
    (pkidir / "bad-ca.crt").write_text("not a certificate\n")
    body = (
        "[defaults]\nca_file = bad-ca.crt\n"
        "[target:a]\nendpoint = https://a.example.com/api\n"
        "[target:b]\nendpoint = https://b.example.com/api\n"
    )
    _, problems = run(pkidir, body)
    assert len(problems) == 1, problems
    assert "[target:a], [target:b] ca_file:" in problems[0]


def test_config_errors_are_returned_not_raised(tmp_path: Path) -> None:
    summary, problems = run(tmp_path, "[target:prod]\nendpoint = http://x.example.com/api\ntimeout = x\n")
    assert summary == [f"config: {tmp_path / 'config.ini'}"]
    assert len(problems) == 2, problems
    named(problems, "target:prod", "endpoint", "allow_insecure_http")
    named(problems, "target:prod", "timeout")


def test_missing_config_file(tmp_path: Path) -> None:
    summary, problems = validate(tmp_path / "missing.ini", {})
    assert problems == [f"{tmp_path / 'missing.ini'}: cannot read config: No such file or directory"]


def test_summary_and_problems_never_hold_passwords(pkidir: Path) -> None:
    (pkidir / "web.pw").write_text("web-" + PASSWORD + "\n")
    ca = pki.make_ca()
    pki.make_client(ca).write(pkidir, "enc", key_password=KEY_PASSWORD.encode())
    body = (
        "[web]\ntls_cert_file = server.crt\ntls_key_file = server.key\n"
        "basic_auth_username = prometheus\nbasic_auth_password_file = web.pw\n"
        + target(cert="client.crt", key="enc.key", extra="client_key_password_env = KEY_PW\n")
        + f"[target:inline]\nendpoint = https://db2.example.com/api\nusername = U\npassword = {PASSWORD}\n"
    )
    summary, problems = run(pkidir, body, {"KEY_PW": KEY_PASSWORD})
    named(problems, "target:prod", "client_key_file", "does not match")
    everything = "\n".join(summary + problems)
    assert PASSWORD not in everything
    assert KEY_PASSWORD not in everything
    assert "<redacted>" in everything


def test_key_and_password_files_readable_by_every_user_are_warnings(pkidir: Path) -> None:
    (pkidir / "db.password").write_text(PASSWORD + "\n")
    (pkidir / "db.password").chmod(0o644)
    (pkidir / "client.key").chmod(0o644)
    body = target().replace("password_env = DB_PASSWORD\n", "password_file = db.password\n")
    summary, problems = run(pkidir, body)
    assert problems == []  # it works; it should not be so
    warnings = [line for line in summary if line.startswith("warning:")]
    assert len(warnings) == 2, summary
    key, password = sorted(warnings)
    assert key.startswith(f"warning: [target:prod] client_key_file: {pkidir / 'client.key'} is readable by "
                          "every user of this host (mode 0644): chmod 600")
    assert password.startswith(f"warning: [target:prod] password_file: {pkidir / 'db.password'} is readable by "
                               "every user")
    assert PASSWORD not in "\n".join(summary)
    for name in ("db.password", "client.key"):
        (pkidir / name).chmod(0o640)
    summary, problems = run(pkidir, body)
    assert problems == [] and not [line for line in summary if line.startswith("warning:")], summary
