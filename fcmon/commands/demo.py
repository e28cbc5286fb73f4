"""`fcmon demo`: a throw-away CA, the emulator on loopback requiring client
certificates, and the daemon probing it. Everything lives in a temp folder.

The emulator also runs two TLS listeners that listServices names, as a
FairCom server runs MQTT over TLS and over secure WebSockets: an MQTTS one
whose certificate expires in 5 days and an MQTT-over-WSS one requiring
client certificates. fcmon discovers and checks both (`listeners = auto`)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Mapping, Optional

from .. import pki
from ..service.daemon import run_daemon

log = logging.getLogger(__name__)

DEMO_CONFIG = """\
; Written by `fcmon demo`: the daemon probing the bundled emulator.
[fcmon]
listen = {listen}
interval = 5
timeout = 3
log_level = info

[target:demo]
endpoint = {endpoint}
username = ADMIN
password = ADMIN
ca_file = ca.crt
client_cert_file = client.crt
client_key_file = client.key
"""


def write_demo(directory: Path, endpoint: str, listen: str) -> Path:
    config = directory / "config.ini"
    config.write_text(DEMO_CONFIG.format(listen=listen, endpoint=endpoint))
    return config


def demo_listeners(files: pki.DemoPKI, directory: Path) -> list:
    from ..emulator import ListenerSpec

    # 5.5 days from 5 minutes ago: the page says "5 days left" (whole days,
    # rounded down) for the first 12 hours of a demo, as the README does.
    mqtts = pki.make_server(files.ca, common_name="localhost", days=5.5).write(directory, "mqtts")
    return [
        ListenerSpec("mqtts", "mqtts", mqtts.cert, mqtts.key, description="MQTT over TLS"),
        ListenerSpec("mqttwss", "mqttwss", files.server.cert, files.server.key, client_ca_file=files.ca_file,
                     description="MQTT over secure WebSockets"),
    ]


def run_demo(listen: str, workdir: Optional[Path] = None, environ: Mapping[str, str] = os.environ) -> int:
    from ..emulator import Emulator  # the product itself does not need it

    with tempfile.TemporaryDirectory(prefix="fcmon-demo-") as tmp:
        directory = Path(workdir or tmp)
        files = pki.write_demo_pki(directory)
        with Emulator(
            cert_file=files.server.cert,
            key_file=files.server.key,
            client_ca_file=files.ca_file,
            listeners=demo_listeners(files, directory),
        ) as emulator:
            config = write_demo(directory, emulator.url, listen)
            print(f"fcmon demo: emulator at {emulator.url} (client certificates required)", flush=True)
            for x in emulator.listeners():
                print(f"fcmon demo: emulator listener {x.spec.name} ({x.spec.protocol}) on port {x.port}",
                      flush=True)
            print(f"fcmon demo: config and certificates in {directory}", flush=True)
            return run_daemon(config, environ)
