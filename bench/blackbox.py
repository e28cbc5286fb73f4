"""prometheus-blackbox-exporter (Debian package) as a reference: one POST per probe, via /probe.

Installed with apt-get when missing (the bench runs as root on a Debian
machine); its systemd service is never started: the bench runs the binary
itself on loopback with a generated config.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import quote

from .procs import LOOPBACK, BenchError, Pki, Proc, Procs, free_port, wait_http

BINARY = "prometheus-blackbox-exporter"
PACKAGE = "prometheus-blackbox-exporter"
MODULE = "faircom"

CREATE_BODY = json.dumps(
    {"api": "admin", "action": "createSession",
     # blackbox never deletes the session: let it expire on the emulator fast.
     "params": {"username": "ADMIN", "password": "ADMIN", "idleConnectionTimeoutSeconds": 1}},
    separators=(",", ":"),
)


def find_or_install(log) -> Tuple[Optional[str], str]:  # type: ignore[no-untyped-def]
    """The binary's path, or None and why not."""
    path = shutil.which(BINARY)
    if path:
        return path, "already installed"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "not installed, and apt-get is unavailable (not root or not Debian)"
    log(f"installing {PACKAGE} with apt-get (its service is not started)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # policy-rc.d 101 keeps the package's service from starting where invoke-rc.d is used.
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    if not policy.exists():
        try:
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created_policy = True
        except OSError:
            pass
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", PACKAGE]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            # The package lists may be missing on a fresh machine.
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            return None, f"apt-get install {PACKAGE} failed: {r.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install {PACKAGE} failed: {exc}"
    finally:
        if created_policy:
            try:
                policy.unlink()
            except OSError:
                pass
    path = shutil.which(BINARY)
    return (path, "installed by the bench") if path else (None, f"{BINARY} not found after install")


def write_config(directory: Path, p: Pki) -> Path:
    # JSON is valid YAML: no YAML writer needed.
    config = {
        "modules": {
            MODULE: {
                "prober": "http",
                "timeout": "5s",
                "http": {
                    "method": "POST",
                    "headers": {"Content-Type": "application/json"},
                    "body": CREATE_BODY,
                    "valid_status_codes": [200],
                    "fail_if_body_not_matches_regexp": ['"errorCode":\\s*0[,}]'],
                    "preferred_ip_protocol": "ip4",
                    "ip_protocol_fallback": False,
                    "tls_config": {
                        "ca_file": str(p.ca_file),
                        "cert_file": str(p.client_cert),
                        "key_file": str(p.client_key),
                        "min_version": "TLS12",
                    },
                },
            }
        }
    }
    path = directory / "blackbox.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


class Blackbox:
    def __init__(self, procs: Procs, binary: str, config: Path, target_url: str):
        self.port = free_port()
        self.target_url = target_url
        self.proc: Proc = procs.start("blackbox_exporter", [
            binary, f"--config.file={config}", f"--web.listen-address={LOOPBACK}:{self.port}",
            "--log.level=warn",
        ])
        wait_http(self.port, "/-/healthy", 30)
        self._path = f"/probe?module={MODULE}&target={quote(target_url, safe='')}"
        self._conn: Optional[http.client.HTTPConnection] = None

    def probe(self) -> bool:
        """One probe through /probe (a kept-alive connection); True when probe_success is 1."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=30)
        try:
            self._conn.request("GET", self._path)
            resp = self._conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            raise
        return resp.status == 200 and b"\nprobe_success 1" in body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def run_rate(bb: Blackbox, rate: float, seconds: float) -> Tuple[int, int]:
    """Probes at `rate` per second for `seconds`; (probes, failures)."""
    period = 1.0 / rate
    n = fails = 0
    start = next_at = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            ok = bb.probe()
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"blackbox_exporter /probe failed: {exc}") from None
        n += 1
        fails += 0 if ok else 1
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    return n, fails
