"""Keys travel only over TLS (or to loopback), TLS is always verified, and the
operator's server listens on loopback unless told otherwise."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr, ValidationError

from watchdog.core.errors import TemporaryError
from watchdog.providers.client import ProviderClient
from watchdog.settings import HttpSettings, ProviderSettings


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.deepinfra.com/v1/openai", True),
        ("http://127.0.0.1:8089/v1", True),
        ("http://127.5.5.5/v1", True),
        ("http://localhost:8089/v1", True),
        ("http://[::1]:8089/v1", True),
        ("http://api.example.com/v1", False),
        ("http://10.0.0.5/v1", False),
    ],
)
def test_plain_http_only_to_loopback(url: str, allowed: bool) -> None:
    """http:// to anything but loopback is a config error unless explicitly allowed."""
    if allowed:
        ProviderSettings(base_url=url)
        return
    with pytest.raises(ValidationError, match="http:// would send the key in clear"):
        ProviderSettings(base_url=url)
    assert ProviderSettings(base_url=url, allow_insecure_http=True).allow_insecure_http


def test_http_server_defaults_to_loopback() -> None:
    """/healthz, /readyz and /metrics listen on 127.0.0.1 unless configured otherwise."""
    assert HttpSettings().host == "127.0.0.1"


def test_no_tls_opt_outs_in_the_code() -> None:
    """Nothing in the package turns certificate checks off."""
    package = Path(__file__).resolve().parent.parent / "watchdog"
    for path in package.rglob("*.py"):
        text = path.read_text()
        for needle in ("ssl=False", "verify_ssl", "CERT_NONE", "check_hostname = False"):
            assert needle not in text, f"{path.name}: {needle}"


async def test_self_signed_certificate_is_refused(tmp_path: Path, aiohttp_server: Any) -> None:
    """A provider with a certificate nobody vouches for gets no request, and no key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed on this machine")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/v1/batches/{id}", handler)
    server = await aiohttp_server(app, ssl=context)
    url = f"https://127.0.0.1:{server.port}/v1"
    client = ProviderClient("p", base_url=url, api_key=SecretStr("sk-never-sent"), max_retries=0)
    async with client:
        with pytest.raises(TemporaryError, match="connection failed"):
            await client.get("batch_1")
    assert seen == []
