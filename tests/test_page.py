"""The status page: served by a running daemon against the simulator, escaped (batch
metadata holding markup is shown, never run), behind a token off loopback, and loaded
in a real headless Chromium driven by Playwright, judged as a person sees it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import LLAMA, Sim
from tests.daemons import Daemon, write_config
from tests.test_cli import Cli, cli  # noqa: F401  (the fixture)
from tests.tools import command
from watchdog.daemon.access import Access
from watchdog.daemon.health import HealthServer
from watchdog.daemon.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = {"note": "<script>alert(1)</script>", "x": '"><img src=x onerror=alert(1)>'}


async def running(
    tmp_path: Path, sim: Sim, clock: Any, extra_ids: list[str] | None = None
) -> tuple[Daemon, str]:
    """A daemon that has polled the batches, and its status page's URL."""
    clock.t = time.time()  # the daemon's clock: the batches were created today
    sim.simulator.add("batch_hostile", model=LLAMA, metadata=HOSTILE, total=1000, rate=5)
    sim.simulator.add("batch_plain", model=LLAMA, total=1000, rate=5, age=600)
    extra = "budgets:\n  - {name: all-daily, limit_usd: 100, window: day}\n"
    extra += "  - {name: tiny, limit_usd: 0.01, window: day}\n"
    config = write_config(tmp_path / "w.yaml", db_url=f"sqlite+aiosqlite:///{tmp_path}/w.db",
                          sim_url=sim.url, extra=extra)  # fmt: skip
    daemon = await Daemon.start(config)
    for batch_id in ("batch_hostile", "batch_plain", *(extra_ids or [])):
        track = await Daemon.start(config, command="track", args=[batch_id, "--provider", "sim"])
        assert await track.finish() == 0
    await daemon.wait_for(lambda: sum(t.get("polled", 0) for t in daemon.ticks()) >= 1)
    port = next(e["port"] for e in daemon.events if e.get("event") == "http_listening")
    url = f"http://127.0.0.1:{port}/"

    ids = ("batch_hostile", "batch_plain", *(extra_ids or []))

    async def shown() -> bool:  # a snapshot with every batch polled, its totals included
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            page = await response.text()
        return response.status == 200 and "<svg" in page and all(i in page for i in ids)

    await daemon.wait_for_async(shown, True)
    return daemon, url


async def test_the_page_shows_everything_escaped(tmp_path: Path, sim: Sim, clock: Any) -> None:
    daemon, url = await running(tmp_path, sim, clock)
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 200
            html = await response.text()
            csp = response.headers["Content-Security-Policy"]
    finally:
        await daemon.stop()
    assert "batch_hostile" in html and "batch_plain" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<script" not in html and "<img" not in html
    assert "default-src 'none'" in csp
    assert "<svg" in html and "Spend per day" in html and "tiny" in html


def server(token: str | None, guarded: bool) -> HealthServer:
    async def ready() -> tuple[bool, str]:
        return True, ""

    async def nothing() -> None:
        return None

    async def page() -> str:
        return "<!doctype html><p>status</p>"

    access = Access([] if token is None else [("page", "viewer", token)], guarded=guarded)
    return HealthServer(alive=lambda now: True, ready=ready, metrics=Metrics(),
                        refresh=nothing, page=page, access=access)  # fmt: skip


@pytest.mark.parametrize(
    ("token", "guarded", "headers", "query", "status"),
    [
        (None, False, {}, "", 200),  # loopback: open
        ("s3cret-token", True, {}, "", 401),
        ("s3cret-token", True, {"Authorization": "Bearer s3cret-token"}, "", 200),
        ("s3cret-token", True, {}, "?token=s3cret-token", 401),  # never in a URL: log in
        ("s3cret-token", True, {"Authorization": "Bearer wrong"}, "", 401),
        (None, True, {}, "", 403),  # off loopback with no token configured: not served
        ("", True, {}, "?token=", 401),  # an empty token never matches an empty one
    ],
)
async def test_off_loopback_the_page_needs_the_token(
    aiohttp_client: Any, token: str | None, guarded: bool, headers: dict[str, str], query: str,
    status: int,
) -> None:  # fmt: skip
    client = await aiohttp_client(server(token, guarded).app())
    response = await client.get("/" + query, headers=headers)
    assert response.status == status
    assert (await client.get("/healthz")).status == 200  # the probes stay open
    assert (await client.get("/metrics")).status == 200


def chromium() -> str:
    """Debian's chromium (.ci/run installs it); under CI its absence fails."""
    return command("chromium", "chromium-browser", package="chromium")


# What a person would see wrong: an element running out of its card sideways, a cell
# whose text is cut, a page that scrolls sideways. Run in the page by Playwright.
LAYOUT_PROBLEMS = """() => {
  const bad = [];
  const name = (el) => el.tagName.toLowerCase() + (el.className ? '.' + el.className : '');
  for (const card of document.querySelectorAll('section')) {
    const box = card.getBoundingClientRect();
    for (const el of card.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && (r.right > box.right + 1 || r.left < box.left - 1)) {
        const at = `${Math.round(r.right)} > ${Math.round(box.right)}`;
        bad.push(`${name(el)} runs out of its card (${at})`);
      }
    }
  }
  for (const cell of document.querySelectorAll('td, th')) {
    if (cell.scrollWidth > cell.clientWidth + 1) {
      bad.push(`cell cut: ${cell.textContent.slice(0, 40)}`);
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth + 1) {
    bad.push('the page scrolls sideways');
  }
  return bad;
}"""
LONG = {"team": "research", "note": "x" * 60, "pipeline": "nightly-eval-of-the-long-context-set",
        "owner": "someone.with.a.long.address@example.com"}  # fmt: skip


async def test_the_page_reads_well_on_a_laptop_and_a_phone(
    tmp_path: Path, sim: Sim, clock: Any
) -> None:
    """Playwright drives Debian's Chromium (launched by its path: no browser download)
    over the page of a running daemon, long ids, models and metadata included, at
    1280x800 and 390x844: no element runs out of its card, no table cell is cut, the
    page never scrolls sideways, and the browser logs no error (the CSP refuses
    nothing). Screenshots go to the test's temporary folder."""
    from playwright.async_api import async_playwright

    browser_path = chromium()
    sim.simulator.add("batch_" + "long" * 25, model="org/" + "m" * 80, metadata=LONG,
                      total=1000, rate=5)  # fmt: skip
    daemon, url = await running(tmp_path, sim, clock, extra_ids=["batch_" + "long" * 25])
    problems: dict[str, list[str]] = {}
    errors: list[str] = []
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=browser_path, args=BROWSER_FLAGS)
            try:
                for width, height in ((1280, 800), (390, 844)):
                    page = await browser.new_page(viewport={"width": width, "height": height})
                    page.on(
                        "console", lambda m: errors.append(m.text) if m.type == "error" else None
                    )
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    await page.goto(url, wait_until="load")
                    assert await page.locator("text=batch_hostile").count() >= 1
                    problems[f"{width}x{height}"] = await page.evaluate(LAYOUT_PROBLEMS)
                    await page.screenshot(path=tmp_path / f"page-{width}.png", full_page=True)
                    await page.close()
            finally:
                await browser.close()
    finally:
        await daemon.stop()
    assert problems == {"1280x800": [], "390x844": []}, problems
    assert errors == []


BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.mark.parametrize("command", [["check-config"], ["run", "--once"]])
async def test_a_configured_token_that_is_missing_is_a_config_error(
    cli: Cli,  # noqa: F811
    command: list[str],
) -> None:
    text = cli.config.read_text()
    guarded = "http: {port: 0, host: 0.0.0.0, token_env: PAGE_TOKEN}"
    cli.config.write_text(text.replace("http: {port: 0}", guarded))
    result = await cli(*command, env={"PAGE_TOKEN": ""})
    assert result.code == 78 and "http: environment variable PAGE_TOKEN is not set" in result.err


@pytest.mark.parametrize("command", [["check-config"], ["run", "--once"]])
async def test_an_empty_token_file_is_a_config_error(
    cli: Cli,  # noqa: F811
    command: list[str],
) -> None:
    """An empty (or blank) token file would let an empty given token in off loopback."""
    token = cli.config.parent / "page-token"
    token.write_text("\n  \n")
    text = cli.config.read_text()
    guarded = f"http: {{port: 0, host: 0.0.0.0, token_file: {token}}}"
    cli.config.write_text(text.replace("http: {port: 0}", guarded))
    result = await cli(*command)
    assert result.code == 78 and result.err.count("\n") == 1
    assert f"http: token_file {token} is empty" in result.err
