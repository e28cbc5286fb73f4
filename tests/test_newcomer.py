"""A newcomer's rough edges (issue 19, item 7), each as it is met."""

from __future__ import annotations

from typing import Dict, List, Tuple

from fcmon.config import WebConfig
from fcmon.web import App


def _call(app: App, path: str, query: str) -> Tuple[str, bytes]:
    got: Dict[str, object] = {}

    def start_response(status: str, headers: List[Tuple[str, str]]) -> None:
        got["status"] = status

    environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"}
    body = b"".join(app(environ, start_response))
    return str(got["status"]), body


def test_probe_without_target_is_400_naming_the_parameter() -> None:
    asked: List[str] = []
    app = App(lambda: b"", lambda: True, lambda: True, lambda name: asked.append(name), WebConfig())
    for query in ("", "target=", "debug=true", "target=a&target=b"):
        status, body = _call(app, "/probe", query)
        assert status == "400 Bad Request", query
        assert b"'target' parameter" in body and b"/probe?target=NAME" in body
    assert asked == []  # nothing probed
    assert _call(app, "/probe", "target=nope")[0] == "404 Not Found"  # a name, unknown: as before
    assert asked == ["nope"]
