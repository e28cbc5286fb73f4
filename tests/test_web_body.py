"""/metrics hands the WSGI server the renderer's blocks with a Content-Length,
without joining the body (fast: no TLS, no daemon)."""

from __future__ import annotations

import gzip
import http.client
from typing import Any, List

import pytest
from prometheus_client import CollectorRegistry

import fcmon.export.exposition as exposition
from fcmon.config import WebConfig
from fcmon.export.exposition import TextRenderer
from fcmon.export.metrics import MetricsStore
from fcmon.web.app import App, WebServer, accepts_gzip

from test_metrics import NOW, failed, healthy, target


@pytest.fixture
def renderer() -> TextRenderer:
    store = MetricsStore()
    names = [f"t{i}" for i in range(200)]
    store.set_targets([target(n) for n in names])
    for i, n in enumerate(names):
        store.record(healthy(n) if i % 4 else failed(n))
    return TextRenderer(store, CollectorRegistry(), clock=lambda: NOW)


def _app(renderer: TextRenderer) -> App:
    return App(renderer.body, lambda: True, lambda: True, lambda name: None, WebConfig())


def test_metrics_body_is_passed_through_in_blocks(renderer: TextRenderer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(exposition, "BLOCK_BYTES", 8 * 1024)
    started: List[Any] = []
    result = _app(renderer)({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET"},
                            lambda status, headers: started.append((status, dict(headers))))
    assert not isinstance(result, (bytes, list))  # handed over as it comes, not joined
    blocks = list(result)
    status, headers = started[0]
    assert status == "200 OK"
    assert len(blocks) > 3
    body = b"".join(blocks)
    assert int(headers["Content-Length"]) == len(body)
    # the format the renderer writes, whatever prometheus_client calls "latest"
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert body == renderer.render()


def test_metrics_over_http(renderer: TextRenderer) -> None:
    server = WebServer(_app(renderer), "127.0.0.1", 0, None)
    server.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    finally:
        server.stop()
    assert resp.status == 200
    assert int(resp.getheader("Content-Length")) == len(body)
    assert body == renderer.render()
    assert body.count(b"fcmon_up{") == 200


@pytest.mark.parametrize("header,expected", [
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("deflate, GZip;q=0.5", True),
    ("identity", False),
    ("", False),
    ("gzip;q=0", False),
    ("gzip;q=0.0, identity", False),
    ("x-gzip", True),
    ("gzip;q=nonsense", False),
])
def test_accept_encoding(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_metrics_gzipped_when_asked(renderer: TextRenderer) -> None:
    started: List[Any] = []
    result = _app(renderer)({"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET",
                             "HTTP_ACCEPT_ENCODING": "gzip, deflate"},
                            lambda status, headers: started.append((status, dict(headers))))
    body = b"".join(result)
    status, headers = started[0]
    assert status == "200 OK"
    assert headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    plain = renderer.render()
    assert gzip.decompress(body) == plain
    assert len(body) < len(plain) / 5


def test_metrics_gzipped_over_http(renderer: TextRenderer) -> None:
    server = WebServer(_app(renderer), "127.0.0.1", 0, None)
    server.start()
    try:
        for accept, encoded in (("gzip", True), ("identity", False)):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", "/metrics", headers={"Accept-Encoding": accept})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status == 200
            assert resp.getheader("Vary") == "Accept-Encoding"
            assert (resp.getheader("Content-Encoding") == "gzip") is encoded
            assert (gzip.decompress(body) if encoded else body) == renderer.render()
    finally:
        server.stop()
