"""The playground in a real headless Chromium: type, send, watch the answer and the speed figures stream in.

The browser is Debian's `chromium` package driven by Playwright (no browser download). Without it the
test skips locally; CI installs it and sets SONIC_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SONIC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SONIC_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def browser_or_skip():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if reason is None and not Path(CHROMIUM).is_file():
        reason = f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SONIC_CHROMIUM)"
    if reason is not None:
        if os.environ.get("SONIC_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


def test_prompt_streams_in_with_live_figures(server):
    sync_playwright = browser_or_skip()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
            page.fill("#max-tokens", "48")
            page.fill("#prompt", "Write a short poem about the sea.")
            page.click("#send")
            answer = page.locator(".message.assistant").last
            answer.wait_for()
            page.wait_for_function("document.querySelector('.message.assistant').dataset.done === '1'",
                                   timeout=60_000)
            text = answer.locator(".body").inner_text()
            chunks = int(answer.get_attribute("data-chunks"))
            tok_s = float(page.inner_text("#tok-s"))
            tokens = int(page.inner_text("#tokens"))
            rendered = page.evaluate("render('Run:\\n```python\\nprint(1 < 2)\\n```\\nthen `x`')")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
        finally:
            browser.close()
    assert not answer_is_error(text), text
    assert text.strip() and chunks > 1  # it arrived in pieces, not in one block
    assert tok_s > 0 and tokens > 1
    assert "<pre><code>print(1 &lt; 2)\n</code></pre>" in rendered and "<code>x</code>" in rendered
    assert (ARTIFACTS / "playground.png").stat().st_size > 0


def answer_is_error(text: str) -> bool:
    return text.startswith("Error:")
