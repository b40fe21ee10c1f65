"""The web console in headless Chromium: sign in, create an agent, chat, see charts with data.

Drives Debian's Chromium (`/usr/bin/chromium`, installed by `make test`) with Playwright's
Python package; skips with the reason when either is missing. Saves a screenshot to
`artifacts/dashboard.png` (or $PROMETHIOS_ARTIFACTS_DIR).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
CHARTS = (
    "chart-trust",
    "chart-compliance",
    "chart-latency",
    "chart-throughput",
    "chart-violations",
    "chart-interventions",
)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make test installs it: apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def _points(page, chart_id: str) -> int:
    return int(page.get_attribute(f"#{chart_id}", "data-points") or 0)


def test_console_sign_in_create_chat_charts(graph: Graph, browser, tmp_path: Path) -> None:
    key = graph.new_user("carol")
    artifacts = Path(os.environ.get("PROMETHIOS_ARTIFACTS_DIR", REPO / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{graph.base_url}/dashboard/native-llm")

    page.fill("#api-key", "pn_not-a-real-key")
    page.click("#sign-in")
    page.wait_for_selector("#signin-error:has-text('not valid')")

    page.fill("#api-key", key)
    page.click("#sign-in")
    page.wait_for_selector("#app:not([hidden])")
    assert "carol" in page.inner_text("#whoami")

    page.fill("#new-name", "Browser Agent")
    page.select_option("#new-mode", "standard")
    page.fill("#new-max-tokens", "24")
    page.click("#create-agent")
    page.wait_for_selector(".card:has-text('Browser Agent')")
    page.wait_for_selector("#agent-panel:not([hidden])")

    for i, message in enumerate(("Hello there!", "Reach me at sam.lee@example.org")):
        page.fill("#chat-input", message)
        page.click("#chat-send")
        page.wait_for_selector(f".msg.agent >> nth={i}", timeout=120_000)
    page.click("#deploy-btn")
    page.wait_for_selector("#deploy-status:has-text('/api/v1/agents/prod-')")

    page.wait_for_function(
        "['chart-trust','chart-latency','chart-throughput','chart-compliance']"
        ".every(id => Number(document.getElementById(id).dataset.points || 0) > 0)",
        timeout=30_000,
    )
    for chart_id in CHARTS:
        box = page.locator(f"#{chart_id}").bounding_box()
        assert box and box["width"] > 100 and box["height"] > 80, chart_id
    assert _points(page, "chart-throughput") >= 1
    assert _points(page, "chart-latency") >= 2  # p50 and p95
    card = page.inner_text(".card:has-text('Browser Agent')")
    assert "deployed" in card and re.search(r"Interactions\s+2\b", card), card
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    page.click("#undeploy-btn")
    page.wait_for_selector("#deploy-status:has-text('not deployed')")
    page.wait_for_selector(".card:has-text('Browser Agent') .badge:has-text('created')")
    assert page.is_hidden("#undeploy-btn")
    assert not errors, errors


def test_console_compares_native_and_wrapped_agents(graph: Graph, browser, faulty_upstream) -> None:
    key = graph.new_user("dave")
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{graph.base_url}/dashboard/native-llm")
    page.fill("#api-key", key)
    page.click("#sign-in")
    page.wait_for_selector("#app:not([hidden])")
    assert page.is_hidden("#new-upstream")

    for name, backend in (("Native One", "native"), ("Wrapped One", "openai")):
        page.fill("#new-name", name)
        page.fill("#new-max-tokens", "24")
        page.select_option("#new-backend", backend)
        if backend == "openai":
            page.wait_for_selector("#upstream-names option[value='faulty']", state="attached")
            page.fill("#new-upstream", "faulty")
            page.fill("#new-upstream-model", "echo")
        page.click("#create-agent")
        page.wait_for_selector(f".card:has-text('{name}')")
        page.click(f".card:has-text('{name}')")
        page.fill("#chat-input", "Where is my package?")
        page.click("#chat-send")
        page.wait_for_selector(".msg.agent", timeout=120_000)
    assert "echo: Where is my package?" in page.inner_text("#chat-log")  # the upstream answered
    assert "wrapped" in page.inner_text(".card:has-text('Wrapped One') .badge.wrapped")

    page.select_option("#window", "900:30")  # refreshes the comparison now
    page.wait_for_function(
        "Number(document.getElementById('chart-cmp-latency').dataset.points || 0) >= 2",
        timeout=30_000,
    )
    table = page.inner_text("#comparison-table")
    assert "native: p50 / p95" in table and "wrapped: p50 / p95" in table
    assert _points(page, "chart-cmp-trust") >= 2
    page.locator("#comparison-panel").screenshot(
        path=str(
            Path(os.environ.get("PROMETHIOS_ARTIFACTS_DIR", REPO / "artifacts"))
            / "native_vs_wrapped.png"
        )
    )
    assert not errors, errors
