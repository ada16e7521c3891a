"""TLS to upstreams through the native pool: verified against the configured CA, refused
otherwise. A real TLS server on loopback with a certificate made for 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import ServerThread
from tests.spec import validate

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for IP 127.0.0.1 (it is its own CA)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def chat(request: Request) -> JSONResponse:
    body = await request.json()
    seen_auth.append(request.headers.get("authorization"))
    return JSONResponse(
        {
            "id": "chatcmpl-tls",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "over TLS", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
        }
    )


seen_auth: list[str | None] = []


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with ServerThread(app, name="tls", ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        assert server.url.startswith("https://")
        yield server.url, cert


def config(url: str, ca_file: Path | None) -> dict[str, object]:
    upstream: dict[str, object] = {
        "provider": "openai",
        "base_url": f"{url}/v1",
        "api_key": "sk-tls-key",
    }
    if ca_file is not None:
        upstream["ca_file"] = str(ca_file)
    return {"upstreams": {"tls": upstream}, "models": {"m": [{"upstream": "tls", "model": "m"}]}}


def ask(gateway_url: str) -> httpx.Response:
    with httpx.Client(timeout=10) as client:
        return client.post(
            f"{gateway_url}/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        )


def test_upstream_over_tls_is_verified_against_its_ca_file(tls_upstream, gateway_server):
    url, cert = tls_upstream
    gateway = gateway_server(config(url, cert))
    reply = ask(gateway.url)
    assert reply.status_code == 200, reply.text
    validate("CreateChatCompletionResponse", reply.json())
    assert reply.json()["choices"][0]["message"]["content"] == "over TLS"
    assert seen_auth[-1] == "Bearer sk-tls-key"


def test_an_untrusted_upstream_certificate_is_refused(tls_upstream, gateway_server):
    url, _ = tls_upstream
    calls = len(seen_auth)
    gateway = gateway_server(config(url, None))  # certifi's CAs do not sign our certificate
    reply = ask(gateway.url)
    assert reply.status_code == 502
    validate("ErrorResponse", reply.json())
    assert reply.json()["error"]["code"] == "upstream_unreachable"
    assert len(seen_auth) == calls  # the key never went out over the unverified connection
