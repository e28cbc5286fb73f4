"""Where docs/runbook.md says what to do: its anchors, and the first thing to check.

The alert rules' `runbook_url` annotations and the status page link to the
same sections: an alert's anchor is its name in lower case
(`#fcmonprobefailing`), a failure reason's is the reason itself
(`#connect_refused`, a `### connect_refused` heading). tests/test_runbook.py
checks that every alert and every reason has its section, that the rules
use these URLs, and that each reason's section says the first check below
word for word.
"""

from __future__ import annotations

from typing import Dict, Optional

# The alert rules' placeholder base (prometheus/fcmon-alerts.yml): `.example`
# never resolves to someone else's page. docs/runbook.md says how to replace it.
RUNBOOK_URL = "https://fcmon.example/docs/runbook.md"

# One line per failure reason (probe and listener checks): the first thing to check.
FIRST_CHECK: Dict[str, str] = {
    "dns": "Does the endpoint's host name resolve on the fcmon host (spelling, resolver)?",
    "connect_refused": "Is the server running and listening on that port (services.json)?",
    "connect_timeout": "Is the port reachable from the fcmon host (firewalls, routing), and is the server overloaded?",
    "tls_handshake": "Do the listener's TLS settings match, and does fcmon validate load the client certificate and key?",
    "tls_verify": "Has the server certificate expired, is it from a CA in ca_file, and does it name the endpoint's host?",
    "client_cert_rejected": "Is client_cert_file issued by a CA the listener trusts, and not expired?",
    "timeout": "Is the server overloaded or hung? The step latencies show the slow step.",
    "http_status": "Is a proxy in front of FairCom, and does the endpoint end in /api?",
    "bad_response": "Is the endpoint really a FairCom JSON DB API (path /api), and is max_response_bytes big enough?",
    "api_error": "Read the server's errorMessage: wrong username or password, session limit, permissions?",
    "internal": "fcmon's own failure: its error log (out of descriptors, memory or threads, or a bug).",
}


def url(anchor: str, base: str = RUNBOOK_URL) -> str:
    return f"{base}#{anchor}"


def reason_url(reason: str, base: str = RUNBOOK_URL) -> str:
    """The runbook section of a failure reason."""
    return url(reason, base)


def alert_url(alert: str, base: str = RUNBOOK_URL) -> str:
    """The runbook section of an alert, as its rule's runbook_url."""
    return url(alert.lower(), base)


def first_check(reason: Optional[str]) -> Optional[str]:
    return None if reason is None else FIRST_CHECK.get(reason)


_CERT_ALERT_ROLE = {"server": "Server", "chain": "Server", "client": "Client", "ca": "CA"}
_CERT_ALERT_LEVEL = {"warning": "ExpiringSoon", "critical": "ExpiringCritical", "expired": "Expired"}


def cert_alert(role: str, level: str, listener: bool = False) -> Optional[str]:
    """The alert a certificate at this level is under (None when `ok`)."""
    suffix = _CERT_ALERT_LEVEL.get(level)
    if suffix is None:
        return None
    who = "Listener" if listener else _CERT_ALERT_ROLE.get(role, "Server")
    return f"Fcmon{who}Cert{suffix}"


LISTENER_DOWN_ALERT = "FcmonListenerDown"
SESSIONS_LEAKING_ALERT = "FcmonSessionsLeaking"
RELOAD_FAILED_ALERT = "FcmonConfigReloadFailed"
