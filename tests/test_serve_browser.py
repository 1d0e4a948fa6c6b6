"""The page of ``cyclegan-vc serve`` in a real browser: headless Chromium (Debian's ``chromium``, driven
by Playwright) against the command itself, started as a subprocess on a loopback port.

Skipped, with the reason, when Chromium or Playwright is missing (``make test`` installs both).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf

from test_serve import RUN_ID, models_folder

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",  # a microphone that plays a tone
]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="Chromium not installed (apt-get install chromium; make test does it)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_prepared):
    """``cyclegan-vc serve`` on the session's models folder, on a free loopback port; its URL."""
    models = models_folder(tmp_path_factory, tiny_prepared)
    port = _free_port()
    command = [sys.executable, "-m", "cyclegan_vc.cli", "serve", "--models", str(models), "--port", str(port),
               "--workers", "1", "--device", "cpu"]
    log = tmp_path_factory.mktemp("serve_log") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"cyclegan-vc serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        assert f"at {url}" in log.read_text()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def page(tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright not installed (pip install -e '.[test]')")
    with playwright.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
        )
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        try:
            yield page
        finally:
            context.close()


OUTPUT_READY = """() => {
    const player = document.querySelector('#output-player');
    return !document.querySelector('#result').hidden && player.readyState >= 2 && player.duration > 0;
}"""

def test_the_page_converts_an_uploaded_recording(server, page, vcc_file, tmp_path):
    recording = vcc_file("SF1", 100001)  # 3.5 s of real speech, FLAC
    page.goto(server)
    page.wait_for_selector(f"#model option[value='{RUN_ID}']", state="attached")
    page.select_option("#model", RUN_ID)
    assert page.input_value("#smooth") == "6" and page.input_value("#energy") == "generator"  # the recommended
    assert page.inner_text("label[for=direction-A2B]") == "SF1 → TM3 (A→B)"
    page.check("#direction-A2B")
    page.set_input_files("#file", str(recording))
    with page.expect_response("**/api/convert") as answer:
        page.click("#convert")
    wav = answer.value.body()
    assert answer.value.headers["content-type"] == "audio/wav" and wav[:4] + wav[8:12] == b"RIFFWAVE"
    page.wait_for_function(OUTPUT_READY, timeout=120_000)
    duration = page.evaluate("document.querySelector('#output-player').duration")
    assert duration == pytest.approx(sf.info(str(recording)).duration, abs=0.01)
    assert page.get_attribute("#download", "download") == "100001-A2B.wav"
    card = page.inner_text("#card")
    assert "A: SF1, B: TM3" in card and "debug" in card and "MCD" in card
    assert page.get_attribute("#card-evaluations a", "href").endswith("/report.html")
    assert page.is_hidden("#error") and page.is_hidden("#progress-box")
    page.screenshot(path=str(tmp_path / "serve-page.png"), full_page=True)
    assert page.errors == []


def test_the_page_shows_the_servers_message_for_a_bad_file(server, page, tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    page.goto(server)
    page.wait_for_selector(f"#model option[value='{RUN_ID}']", state="attached")
    page.set_input_files("#file", str(bad))
    page.click("#convert")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error").startswith("notes.wav: not a readable audio file")
    assert page.errors == []


def test_the_page_records_from_the_microphone_and_converts_it(server, page):
    page.goto(server)
    page.wait_for_selector(f"#model option[value='{RUN_ID}']", state="attached")
    page.click("#record")
    page.wait_for_function("() => document.querySelector('#record-status').textContent === 'recording…'")
    time.sleep(1.5)
    page.click("#stop")
    page.wait_for_function("() => document.querySelector('#record-status').textContent.startsWith('recorded')")
    recorded = float(page.inner_text("#record-status").split()[1])
    assert 1.0 < recorded < 3.0
    page.click("#convert")
    page.wait_for_function(OUTPUT_READY, timeout=120_000)
    assert page.evaluate("document.querySelector('#output-player').duration") == pytest.approx(recorded, abs=0.05)
    assert page.get_attribute("#download", "download") == "recording-A2B.wav"
    assert page.errors == []
