"""`.ci/audit.py`'s fallback audit (PyPI project data) against a fake PyPI on loopback: a pin
with an advisory fails the audit, a clean newest pin passes, a stale pin is named."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

PROJECTS = {
    "clean": {"info": {"version": "2.0"}, "vulnerabilities": []},
    "bad": {
        "info": {"version": "1.1"},
        "vulnerabilities": [{"id": "PYSEC-0000-1", "link": "https://osv.dev/x", "withdrawn": None}],
    },
    "withdrawn": {
        "info": {"version": "3.0"},
        "vulnerabilities": [{"id": "PYSEC-0000-2", "withdrawn": "2026-01-01T00:00:00Z"}],
    },
}


class _PyPI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        project = PROJECTS.get(parts[0]) if len(parts) == 2 and parts[1] == "json" else None
        body = json.dumps(project).encode()
        self.send_response(200 if project else 404)
        self.send_header("content-length", str(len(body) if project else 0))
        self.end_headers()
        if project:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def audit(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PyPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AUDIT_PYPI_URL", f"http://127.0.0.1:{server.server_address[1]}")
    path = Path(__file__).parents[2] / ".ci" / "audit.py"
    spec = importlib.util.spec_from_file_location("ci_audit", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_pin_with_an_advisory_fails_the_audit(
    audit: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit.fallback({"clean": "2.0", "bad": "1.1"}) == 1
    assert "VULNERABLE: bad==1.1: PYSEC-0000-1" in capsys.readouterr().out


def test_clean_and_withdrawn_pass_and_a_stale_pin_is_named(
    audit: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert audit.fallback({"clean": "2.0", "withdrawn": "3.0", "clean2": "1.0"}) == 0
    out = capsys.readouterr().out
    assert "2 of 3 pins audited" in out
    assert "not audited, not the newest release: clean2==1.0" in out


def test_the_lock_file_pins_every_runtime_dependency(audit: ModuleType) -> None:
    lock = Path(__file__).parents[2] / "requirements.lock"
    pinned = {name.lower().replace("_", "-") for name in audit.pins(lock)}
    for needed in ("starlette", "uvicorn", "httpx", "aiolimiter", "pybreaker", "pyyaml"):
        assert needed in pinned
