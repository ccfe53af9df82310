"""The playground in a real browser: Debian's Chromium, driven by Playwright, against
`python -m src.main --serve` (the command the README gives) started as a separate process on the shared tiny run.

Chromium is /usr/bin/chromium (`.ci/install_browser.sh` installs it; `playwright install` is never
used: it would download its own browsers). Under CI=true a missing Chromium fails the test; elsewhere
the browser test is skipped. PLAYGROUND_SCREENSHOTS=1 saves one screenshot per tab to
docs/playground_<tab>.png, PLAYGROUND_CHECKPOINT=runs/NAME takes them of your own run instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROMPT = "The cat"
TIMEOUT_MS = 30_000
MAX_SCREENSHOT_BYTES = 300_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_run):
    """The playground as its own process; at the end Ctrl-C (SIGINT) must stop it cleanly (exit code 0)."""
    checkpoint = os.environ.get("PLAYGROUND_CHECKPOINT") or str(tiny_run)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "src.main", "--serve", "--checkpoint", checkpoint, "--port", str(port), "--device", "cpu"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, process.kill)  # a hung start must not hang the test run
    watchdog.start()
    first_line = process.stdout.readline()
    watchdog.cancel()
    url = f"http://127.0.0.1:{port}/"
    if f"running at {url}" not in first_line:
        process.kill()
        pytest.fail(f"the playground did not start: {first_line!r} {process.stderr.read()[-2000:]}")
    yield url
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = process.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr[-2000:]


def test_server_process_answers(served):
    response = httpx.get(served, timeout=10)
    assert response.status_code == 200 and "Spielwiese" in response.text


@pytest.fixture(scope="module")
def page(served, tmp_path_factory):
    """A fresh headless Chromium profile with one page; every request it makes is recorded."""
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing; CI must run .ci/install_browser.sh first")
        pytest.skip(f"{CHROMIUM} is missing (install it with .ci/install_browser.sh)")
    if os.environ.get("CI") == "true":
        from playwright.sync_api import sync_playwright  # a missing driver fails in CI
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1200, "height": 900})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.requests = []
        page.on("request", lambda request: page.requests.append(request.url))
        page.goto(served)
        yield page
        context.close()


def screenshot(page, tab: str) -> None:
    """docs/playground_<tab>.png, only when asked for (CI must not rewrite tracked files).

    Kept under MAX_SCREENSHOT_BYTES: a larger picture is stored with a 256-colour palette.
    """
    if os.environ.get("PLAYGROUND_SCREENSHOTS") != "1":
        return
    path = REPO_ROOT / "docs" / f"playground_{tab}.png"
    for close in page.locator(".toast-close").all():  # messages of earlier steps
        close.click()
    page.wait_for_timeout(500)  # the toasts fade out
    page.screenshot(path=str(path), full_page=True)
    if path.stat().st_size > MAX_SCREENSHOT_BYTES:
        from PIL import Image

        with Image.open(path) as image:
            image.convert("RGB").quantize(colors=256).save(path, optimize=True)
    assert path.stat().st_size <= MAX_SCREENSHOT_BYTES, f"{path} is {path.stat().st_size:,} bytes"


def image_of(page, selector: str) -> str:
    """The data URL of the picture a gr.Plot shows (waits until there is one)."""
    image = page.locator(f"{selector} img")
    image.wait_for()
    return image.get_attribute("src")


def changed_image(page, selector: str, before: str) -> str:
    """Wait until the picture of `selector` differs from `before`; return the new one."""
    page.wait_for_function("([sel, old]) => { const img = document.querySelector(sel + ' img');"
                           " return img && img.src !== old; }", arg=[selector, before])
    return image_of(page, selector)


def test_write_tab_streams_and_shows_candidates(page):
    from playwright.sync_api import expect

    page.locator("#write-prompt textarea").fill(PROMPT)
    tokens = page.locator("#n-tokens input[type=number]")
    tokens.fill("60")
    tokens.press("Enter")
    page.click("#write-button")
    expect(page.locator("#write-status")).to_contain_text("Fertig: 60 Tokens", timeout=TIMEOUT_MS)
    expect(page.locator(".toast-body")).to_have_count(0)  # no error or warning on the way
    expect(page.locator("#generated .token").first).to_have_text(PROMPT)
    assert page.locator("#generated .token.highlighted").count() >= 30  # coloured generated tokens
    expect(page.locator("#candidate-table")).to_contain_text("gewählt")
    last_step = image_of(page, "#candidate-plot")
    assert last_step.startswith("data:image/png;base64,")
    # clicking a generated token shows the candidates of its step: the first one after a space
    # (the start of a word, where a model hesitates most), else the 3rd
    texts = page.locator("#generated .token.highlighted").all_inner_texts()
    index = next((i + 1 for i, text in enumerate(texts[:30]) if text.strip() == ""), 2)
    page.locator("#generated .token.highlighted").nth(index).click()
    expect(page.locator("#step input[type=number]")).to_have_value(str(index + 1))
    changed_image(page, "#candidate-plot", last_step)
    screenshot(page, "schreiben")


def test_attention_heat_map_changes_with_layer_and_head(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Attention").click()
    page.locator("#attention-prompt textarea").fill(PROMPT)
    page.click("#attention-button")
    expect(page.locator("#attention-note")).to_contain_text("schaut in Layer 0", timeout=TIMEOUT_MS)
    layer0 = image_of(page, "#attention-plot")
    page.click("#attention-layer input")
    page.get_by_role("option", name="Layer 1").click()
    layer1 = changed_image(page, "#attention-plot", layer0)
    page.click("#attention-head input")
    page.get_by_role("option", name="alle Köpfe").click()
    changed_image(page, "#attention-plot", layer1)
    expect(page.locator("#attention-note")).to_contain_text("Mittel über alle Köpfe")
    page.locator("#attention-tokens .token").nth(2).click()  # the query becomes token 2
    expect(page.locator("#attention-note")).to_contain_text("Token 2 '")
    expect(page.locator("#attention-patterns")).to_contain_text("Wortanfang")
    screenshot(page, "attention")


def test_inside_and_training_tabs(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Innenleben").click()
    expect(page.locator("#inside-stages")).to_contain_text("causal mask", timeout=TIMEOUT_MS)
    assert image_of(page, "#inside-surprisal").startswith("data:image/png;base64,")
    screenshot(page, "innenleben")
    page.get_by_role("tab", name="Training").click()
    assert image_of(page, "#training-plot").startswith("data:image/png;base64,")
    expect(page.locator("#training-samples")).to_contain_text("Step")
    screenshot(page, "training")


def test_the_page_never_reached_beyond_the_server(page, served):
    assert page.requests, "the page made no requests at all?"
    foreign = sorted({url for url in page.requests
                      if urlparse(url).scheme in ("http", "https", "ws", "wss")
                      and urlparse(url).netloc != urlparse(served).netloc})
    assert foreign == []


def test_bad_prompt_shows_an_error_and_a_good_one_still_works(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Schreiben").click()
    page.locator("#write-prompt textarea").fill("")
    page.click("#write-button")
    expect(page.locator(".toast-body").filter(has_text="Der Prompt ist leer")).to_be_visible()
    page.locator("#write-prompt textarea").fill(PROMPT + " sees")
    temperature = page.locator("#temperature input[type=number]")
    temperature.fill("0")
    temperature.press("Enter")
    page.click("#write-button")
    expect(page.locator("#write-status")).to_contain_text("greedy", timeout=TIMEOUT_MS)
    expect(page.locator("#write-status")).to_contain_text("Fertig", timeout=TIMEOUT_MS)
