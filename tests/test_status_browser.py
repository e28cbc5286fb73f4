"""The status page in a real headless chromium, against `fcmon run` and the
emulator with client certificates required.

Four targets, in config order: `healthy`; `hostile`, whose certificate
has 20 days left and whose MQTTS listener's 5 (critical), and whose
emulator is made to answer listDatabases with errorCode 12031 and the
errorMessage `<script>alert(1)</script>` while the page is open; `renewal`,
the same server without its listeners (a warning only); and
`expired-client`, which presents a client certificate that expired 9 days
ago. A reload with a broken config is rejected before the page is opened.
The test asserts on the DOM chromium built (and that no dialog opened):
the summary and tab title, rows worst first as in /api/v1/status, critical
and warning told apart by symbol and word, the runbook links and first
checks; at 1400, 1000 and 412 px wide, that nothing scrolls sideways and
that the failure and the certificates are on screen at 412 px. It waits
for the page to refresh itself (its meta refresh, no navigation) and show
the new failure, saves a screenshot per width in its tmp dir, and follows
the row's debug probe link. `make screenshot` runs it with
FCMON_SCREENSHOT_DIR=docs to write docs/status-page-{1400,1000,412}.png.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest
import requests

from fcmon import pki
from fcmon.emulator import Emulator, ListenerSpec
from fcmon.emulator.faults import Fault

from support import IN_CI, PKI, FcmonProcess, require_tool, target_section, wait_for

pytestmark = pytest.mark.slow

HOSTILE = "<script>alert(1)</script>"
HOSTILE_HOST = "<img src=x onerror=alert(2)>"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1500,900",
)


def _selenium():  # type: ignore[no-untyped-def]
    try:
        from selenium import webdriver
    except ImportError:
        message = "selenium is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return webdriver


@pytest.fixture
def browser() -> Iterator[Callable[[], Any]]:
    """The driver, started in a thread while the test starts fcmon and waits
    for its first probes (seconds each): call it for the driver."""
    webdriver = _selenium()
    from selenium.webdriver.chrome.service import Service

    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    profile = tempfile.mkdtemp(prefix="fcmon-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    # Given a driver path, selenium downloads nothing (no network here anyway).
    pool = ThreadPoolExecutor(1)
    started = pool.submit(webdriver.Chrome, options=options, service=Service(chromedriver))
    try:
        yield lambda: started.result(timeout=120)
    finally:
        try:
            started.result(timeout=120).quit()
        finally:
            pool.shutdown()
            shutil.rmtree(profile, ignore_errors=True)


def _status(base: str) -> dict:
    s = requests.Session()
    s.trust_env = False
    r = s.get(base + "/api/v1/status", timeout=10)
    r.raise_for_status()
    return r.json()


def _states(base: str) -> dict:
    return {t["name"]: t["state"] for t in _status(base)["targets"]}


WIDTHS = (1400, 1000, 412)


def _at_width(driver, width: int, height: int = 900) -> None:  # type: ignore[no-untyped-def]
    # 412 px as a phone (the page's viewport meta applies), the others as desktops
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def _no_sideways_scroll(driver, width: int) -> None:  # type: ignore[no-untyped-def]
    inner, scroll = driver.execute_script(
        "return [window.innerWidth, document.documentElement.scrollWidth]")
    assert inner == width and scroll <= inner, f"at {width} px the page is {scroll} px wide"


def _on_screen(driver, element) -> None:  # type: ignore[no-untyped-def]
    """Displayed and horizontally inside the viewport (nothing cut off to the right)."""
    assert element.is_displayed()
    left, right, inner = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return [r.left, r.right, window.innerWidth]", element)
    assert 0 <= left and right <= inner, (element.text, left, right, inner)


def test_status_page_in_chromium(browser, test_pki: PKI, session_emulator: Emulator,  # type: ignore[no-untyped-def]
                                 tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from fcmon import runbook

    started = time.monotonic()
    healthy_emu = session_emulator
    healthy_emu.clear_faults()
    expired = pki.make_client(test_pki.ca, days=1,
                              not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10))
    expired_files = expired.write(tmp_path, "expired-client")
    # The hostile server's certificate is due for renewal: 20 days, under the warning threshold;
    # its listener's, 5 days, under the critical one.
    soon = pki.make_server(test_pki.ca, days=5).write(tmp_path, "mqtts")
    renewal_due = pki.make_server(test_pki.ca, days=20).write(tmp_path, "renewal-due")
    with Emulator(cert_file=renewal_due.cert, key_file=renewal_due.key, client_ca_file=test_pki.ca_file,
                  server_version="FairCom DB 13.0.3 <b>", hostname=HOSTILE_HOST,
                  listeners=[ListenerSpec("mqtts8883", "mqtts", soon.cert, soon.key)]) as hostile_emu:
        config = tmp_path / "config.ini"
        good = ("[fcmon]\nlisten = 127.0.0.1:0\ninterval = 2\ntimeout = 1.5\n\n"
                + target_section(test_pki, healthy_emu, "healthy")
                + target_section(test_pki, hostile_emu, "hostile")
                + target_section(test_pki, hostile_emu, "renewal", listeners="none")
                + target_section(test_pki, healthy_emu, "expired-client").replace(
                    f"client_cert_file = {test_pki.client.cert}\nclient_key_file = {test_pki.client.key}",
                    f"client_cert_file = {expired_files.cert}\nclient_key_file = {expired_files.key}"))
        assert str(expired_files.cert) in good
        config.write_text(good)
        with FcmonProcess("run", "-c", str(config)) as fc:
            base = fc.metrics_url()[: -len("/metrics")]
            wait_for(lambda: _states(base) == {"healthy": "up", "hostile": "up", "renewal": "up",
                                               "expired-client": "down"}, 30)
            # the hostile server's MQTTS listener, discovered with listServices
            wait_for(lambda: [x["name"] for t in _status(base)["targets"] if t["name"] == "hostile"
                              for x in t["listeners"]] == ["mqtts8883"], 30)

            # A broken config, reloaded: rejected, the running one kept.
            config.write_text(good.replace("timeout = 1.5", "timeout = 1.5\ntimout = 3"))
            fc.proc.send_signal(signal.SIGHUP)
            fc.wait_for_line(r"config reload failed")
            status = _status(base)
            assert status["reload"]["successful"] is False

            # Worst first, in the JSON as on the page: down, critical, warning, up.
            order = ["expired-client", "hostile", "renewal", "healthy"]
            assert [(t["name"], t["state"], t["level"]) for t in status["targets"]] == [
                ("expired-client", "down", "critical"), ("hostile", "up", "critical"),
                ("renewal", "up", "warning"), ("healthy", "up", "ok")]

            driver = browser()
            _at_width(driver, 1400)
            driver.get(base + "/")
            page = driver.find_element(By.TAG_NAME, "html")
            assert [r.get_attribute("data-target") for r in
                    driver.find_elements(By.CSS_SELECTOR, "tr.target")] == order

            # The summary: what is wrong, at the top and in the tab's title.
            summary = {li.get_attribute("class").split()[1]: li.text
                       for li in driver.find_elements(By.CSS_SELECTOR, "header ul.summary li")}
            assert summary["sum-down"] == "\u2716 1 down"
            # critical: the listener's 5 days and the expired client certificate
            assert summary["sum-cert-critical"] == "\u203c 2 certificates critical (1 expired)"
            assert summary["sum-cert-warning"] == "\u26a0 2 certificates warning"  # hostile's and renewal's server
            assert summary["sum-listeners-down"] == "\u2714 0 listeners down"
            assert summary["sum-reload"] == "\u2716 config reload failed"
            assert driver.title == ("fcmon: 1 down, 2 certificates critical (1 expired), "
                                    "2 certificates warning, config reload failed \u00b7 3/4 up")
            header = driver.find_element(By.TAG_NAME, "header").text
            assert "targets up: 3 / 4" in header
            reload_error = driver.find_element(By.CSS_SELECTOR, ".reload-error").text
            assert "[fcmon] timout" in reload_error and "timeout" in reload_error
            for link in ("/metrics", "/-/ready", "/-/healthy"):
                assert driver.find_element(By.CSS_SELECTOR, f'header a[href="{link}"]').is_displayed()

            def row(name: str):  # type: ignore[no-untyped-def]
                return driver.find_element(By.CSS_SELECTOR, f'tr.target[data-target="{name}"]')

            healthy = row("healthy")
            assert healthy.find_element(By.CSS_SELECTOR, ".state").text == "\u2714 up"
            assert not healthy.find_elements(By.CSS_SELECTOR, ".level")
            assert "TLSv1." in healthy.text and "connect" in healthy.text and "databases" in healthy.text
            assert healthy.find_element(By.CSS_SELECTOR, ".server-version").text.startswith("FairCom JSON DB API")
            assert healthy.find_element(By.CSS_SELECTOR, ".peer").text.startswith("127.0.0.1:")
            server_cert = healthy.find_element(By.CSS_SELECTOR, ".certs li")
            assert "server" in server_cert.text and "days left" in server_cert.text

            bad = row("expired-client")
            state = bad.find_element(By.CSS_SELECTOR, ".state")
            assert state.text == "\u2716 down"
            # The stylesheet applied: a red state cell (the text says it too).
            assert state.value_of_css_property("background-color") == "rgba(179, 38, 30, 1)"
            assert bad.find_element(By.CSS_SELECTOR, ".reason").text == "client_cert_rejected"
            assert (bad.find_element(By.CSS_SELECTOR, ".first-check").text
                    == "First check: " + runbook.FIRST_CHECK["client_cert_rejected"])
            reason_link = bad.find_element(By.CSS_SELECTOR, "a.runbook")
            assert reason_link.get_attribute("href") == runbook.reason_url("client_cert_rejected")
            expired_cert = bad.find_element(By.CSS_SELECTOR, '.days[data-level="expired"]')
            assert expired_cert.text == "\u2716 expired 9 days ago"
            assert "CN=ADMIN" in expired_cert.find_element(By.XPATH, "../..").text
            assert expired_cert.value_of_css_property("color") == "rgba(255, 255, 255, 1)"
            # the certificate links to its alert's runbook section, the rule's runbook_url
            assert (expired_cert.find_element(By.XPATH, "..").get_attribute("href")
                    == runbook.alert_url("FcmonClientCertExpired"))
            link = bad.find_element(By.CSS_SELECTOR, "a.debug").get_attribute("href")
            assert link == base + "/probe?target=expired-client&debug=true"
            assert driver.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content") == "15"

            # critical and warning: told apart by symbol and word, not only colour
            hostile = row("hostile")
            assert hostile.find_element(By.CSS_SELECTOR, ".state").text == "\u2714 up"
            assert hostile.find_element(By.CSS_SELECTOR, ".level").text == "\u203c critical"
            renewal = row("renewal")
            assert renewal.find_element(By.CSS_SELECTOR, ".level").text == "\u26a0 warning"
            warning = renewal.find_element(By.CSS_SELECTOR, '.days[data-level="warning"]')
            assert warning.text == "\u26a0 warning: 19 days left"
            assert warning.value_of_css_property("background-color") == "rgba(255, 244, 214, 1)"
            # a row per listener, under its target, with its own certificate
            mqtts = driver.find_element(By.CSS_SELECTOR, 'tr.listener[data-target="hostile"][data-listener="mqtts8883"]')
            assert mqtts.find_element(By.CSS_SELECTOR, ".state").text == "\u2714 up"
            assert mqtts.find_element(By.CSS_SELECTOR, ".port").text == str(hostile_emu.listener("mqtts8883").port)
            soon_cert = mqtts.find_element(By.CSS_SELECTOR, '.days[data-level="critical"]')
            assert soon_cert.text == "\u203c critical: 4 days left"
            assert soon_cert.value_of_css_property("background-color") != warning.value_of_css_property(
                "background-color")
            assert not driver.find_elements(By.CSS_SELECTOR, 'tr.listener[data-target="healthy"]')

            # Every width: nothing scrolls sideways; at 412 px the failure and the certificates are on screen.
            for width in WIDTHS:
                _at_width(driver, width)
                _no_sideways_scroll(driver, width)
                if width == 412:
                    bad = row("expired-client")
                    for element in (bad.find_element(By.CSS_SELECTOR, ".reason"),
                                    bad.find_element(By.CSS_SELECTOR, ".message"),
                                    bad.find_element(By.CSS_SELECTOR, ".first-check"),
                                    bad.find_element(By.CSS_SELECTOR, '.days[data-level="expired"]'),
                                    row("renewal").find_element(By.CSS_SELECTOR, ".certs"),
                                    mqtts.find_element(By.CSS_SELECTOR, ".certs")):
                        driver.execute_script("arguments[0].scrollIntoView()", element)
                        _on_screen(driver, element)
                _screenshot(driver, width, tmp_path)
            _at_width(driver, 1400)

            # The server turns hostile; the open page refreshes by itself and shows it, as text.
            hostile_emu.set_fault("listDatabases", Fault(error_code=12031, error_message=HOSTILE))
            WebDriverWait(driver, 40).until(ec.staleness_of(page))
            WebDriverWait(driver, 40, ignored_exceptions=(Exception,)).until(
                lambda d: "down" in row("hostile").find_element(By.CSS_SELECTOR, ".state").text
                and "down" in row("renewal").find_element(By.CSS_SELECTOR, ".state").text)
            with pytest.raises(NoAlertPresentException):
                driver.switch_to.alert  # noqa: B018 (the property raises when no dialog is open)
            # down first, in config order
            assert [r.get_attribute("data-target") for r in driver.find_elements(By.CSS_SELECTOR, "tr.target")] == [
                "hostile", "renewal", "expired-client", "healthy"]
            assert [t["name"] for t in _status(base)["targets"]] == ["hostile", "renewal", "expired-client", "healthy"]
            hostile = row("hostile")
            assert hostile.find_element(By.CSS_SELECTOR, ".reason").text == "api_error"
            message = hostile.find_element(By.CSS_SELECTOR, ".message")
            assert message.text == f"listDatabases: errorCode 12031 (authToken matches no session): {HOSTILE}"
            assert message.is_displayed()
            assert (hostile.find_element(By.CSS_SELECTOR, ".calls").text
                    == "listDatabases: HTTP 200, errorCode 12031 (authToken matches no session)")
            assert hostile.find_element(By.CSS_SELECTOR, ".server-host").text == HOSTILE_HOST
            assert hostile.find_element(By.CSS_SELECTOR, ".server-version").text == "FairCom DB 13.0.3 <b>"
            assert driver.execute_script("return [document.scripts.length, document.images.length, "
                                         "document.querySelectorAll('b').length]") == [0, 0, 0]
            events = driver.find_element(By.CSS_SELECTOR, "ol.events").text
            assert ("hostile: down at list_databases: api_error: listDatabases: errorCode 12031 "
                    f"(authToken matches no session): {HOSTILE}") in events
            assert "expired-client: down at connect: client_cert_rejected" in events

            # The row's debug probe: that target probed now, its log as plain text.
            row("hostile").find_element(By.CSS_SELECTOR, "a.debug").click()
            WebDriverWait(driver, 30).until(lambda d: "/probe?" in d.current_url)
            assert driver.current_url == base + "/probe?target=hostile&debug=true"
            assert driver.execute_script("return document.contentType") == "text/plain"
            log = driver.find_element(By.TAG_NAME, "body").text
            assert "errorCode 12031 (authToken matches no session)" in log and HOSTILE in log
            assert "fcmon_up" in log and 'target="hostile"' in log
            assert driver.execute_script("return document.scripts.length") == 0

            assert fc.stop() == 0
        assert hostile_emu.open_sessions() == 0
    print(f"browser test: {time.monotonic() - started:.1f} s")


def _screenshot(driver, width: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The whole page at this width, for people (and the README: `make screenshot`)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    _at_width(driver, width, height)
    driver.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / f"status-page-{width}.png"
    assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    folder = os.environ.get("FCMON_SCREENSHOT_DIR")
    if folder:
        shutil.copyfile(shot, Path(folder) / shot.name)
    _at_width(driver, width)
