"""The web page of `emotune serve`, used as a person would: Debian's Chromium, headless, driven over the
Chrome DevTools protocol (type lines, click, read the bars, switch models, screenshot)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from .conftest import EMOTIONS
from .test_serve import ServerProcess, train_serving_runs

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1000,1200", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        raise RuntimeError("chromium is not installed: run scripts/install-system-deps.sh")
    pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")


class Browser:
    """A headless Chromium with a fresh profile and one page, spoken to over CDP (a websocket)."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        self.proc = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.monotonic() < deadline:
            pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                     if t["type"] == "page"]
            time.sleep(0.1)
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                                                   open_timeout=30))
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")

    def open_page(self, url: str) -> None:
        """Load emotune's page and wait until it has loaded its model list."""
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.wait_for("document.body && document.body.dataset.ready === '1'")

    def click(self, selector: str) -> None:
        box = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                        " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, selector: str, lines: list[str]) -> None:
        self.click(selector)
        for i, line in enumerate(lines):
            if i:
                self.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                          windowsVirtualKeyCode=13, text="\r")
                self.send("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13)
            self.send("Input.insertText", text=line)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if hasattr(self, "stack"):
            self.stack.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


RESULTS_JS = """JSON.stringify([...document.querySelectorAll('.result')].map(card => ({
  text: card.querySelector('.text').textContent,
  top: card.querySelector('.top').textContent,
  bars: [...card.querySelectorAll('.bar-row')].map(r => [r.dataset.label,
                                                         parseFloat(r.querySelector('.bar').style.width)])})))"""


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    runs = train_serving_runs(tmp_path_factory.mktemp("page"), tiny_model)
    srv = ServerProcess(f"emo={runs['emo-lora']}", f"senti={runs['senti-lora']}", "--precision", "fp32",
                        "--max-chars", "200")
    yield srv
    srv.stop()


def test_page_classifies_lines_and_switches_models(server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.open_page(server.url + "/")
        assert browser.eval("[...document.querySelectorAll('#model option')].map(o => o.value)") == ["emo", "senti"]
        assert "lora on tiny-bert" in browser.eval("document.getElementById('model-info').textContent")

        lines = ["i feel happy today", "i am so scared right now", "the film was awful overall"]
        browser.type("#texts", lines)
        assert browser.eval("document.getElementById('texts').value") == "\n".join(lines)
        browser.click("#go")
        browser.wait_for(f"document.querySelectorAll('.result').length === {len(lines)}")
        cards = json.loads(browser.eval(RESULTS_JS))
        api = httpx.post(server.url + "/v1/predict", json={"texts": lines, "model": "emo"}).json()["predictions"]
        for card, line, expected in zip(cards, lines, api):
            assert card["text"] == line
            assert sorted(label for label, _ in card["bars"]) == sorted(EMOTIONS)
            assert abs(sum(w for _, w in card["bars"]) - 100) < 0.1  # the bars are the probabilities
            assert card["bars"][0][0] == expected["label"] and card["top"].startswith(expected["label"])
        browser.screenshot(tmp_path / "emotion.png")

        # Switching the model re-classifies with the other model's labels.
        browser.eval("(() => { const s = document.getElementById('model'); s.value = 'senti';"
                     " s.dispatchEvent(new Event('change')); })()")
        browser.wait_for("document.querySelector('.bar-row') && "
                         "[...document.querySelectorAll('.result')[0].querySelectorAll('.bar-row')].length === 2")
        cards = json.loads(browser.eval(RESULTS_JS))
        assert len(cards) == len(lines) and all({b[0] for b in c["bars"]} == {"positive", "negative"} for c in cards)
        shot = browser.screenshot(tmp_path / "sentiment.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        if os.environ.get("EMOTUNE_SCREENSHOTS"):  # keep them to look at
            for name in ("emotion.png", "sentiment.png"):
                shutil.copy(tmp_path / name, Path(os.environ["EMOTUNE_SCREENSHOTS"]) / name)

        # A refused request shows the server's message instead of results.
        browser.eval("document.getElementById('texts').value = 'x'.repeat(300)")
        browser.click("#go")
        message = browser.wait_for("document.getElementById('error').textContent")
        assert "at most 200" in message
    finally:
        browser.close()


def test_docs_page_renders_offline(server, tmp_path):
    """/docs is built on the server from the schema: it renders with nothing fetched from another origin."""
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/docs")
        browser.wait_for("document.readyState === 'complete' && document.querySelectorAll('.op').length > 0")
        text = browser.eval("document.body.innerText")
        assert "POST" in text and "/v1/predict" in text and "/v1/models" in text and "Content-Type" in text
        assert browser.eval("document.querySelector('h1').getBoundingClientRect().height") > 10  # laid out
        resources = browser.eval("performance.getEntriesByType('resource').map(e => e.name)")
        assert all(r.startswith(server.url) for r in resources), resources
        shot = browser.screenshot(tmp_path / "docs.png")
        assert shot.stat().st_size > 10_000  # not a blank page
    finally:
        browser.close()


def test_page_shows_a_section_per_task_with_value_gauges(tiny_model, toy_data, tmp_path):
    """A multi-task model (emotion classes + V/A regression): a section per task, bars for the classes, and a
    gauge per target whose marker sits where the value falls in the span /v1/models reports."""
    from emotune import api

    from .test_multitask import multitask_config

    run = tmp_path / "mt"
    api.train(multitask_config(tiny_model, toy_data, tmp_path), run, progress=False)
    srv = ServerProcess(f"mt={run}", "--precision", "fp32")
    browser = Browser(tmp_path / "profile")
    try:
        ranges = httpx.get(srv.url + "/v1/models").json()["models"][0]["ranges"]
        assert set(ranges) == {"vad:V", "vad:A"} and all(lo < hi for lo, hi in ranges.values())
        browser.send("Page.navigate", url=srv.url + "/")
        browser.wait_for("document.body && document.body.dataset.ready === '1'")
        browser.type("#texts", ["i feel happy today"])
        browser.click("#go")
        browser.wait_for("document.querySelectorAll('.result .task').length === 2")
        page = json.loads(browser.eval("""JSON.stringify([...document.querySelectorAll('.result .task')].map(t => ({
          task: t.dataset.task, bars: t.querySelectorAll('.bar').length,
          gauges: [...t.querySelectorAll('.gauge-row')].map(r => [r.dataset.label, parseFloat(r.dataset.value),
                                                                 parseFloat(r.querySelector('.mark').style.left)])})))"""))
        answer = httpx.post(srv.url + "/v1/predict", json={"texts": ["i feel happy today"]}).json()
        tasks = answer["predictions"][0]["tasks"]
        assert [t["task"] for t in page] == ["emotion", "vad"]
        assert page[0]["bars"] == len(EMOTIONS) and page[0]["gauges"] == []
        for name, value, left in page[1]["gauges"]:
            lo, hi = ranges[f"vad:{name}"]
            assert value == pytest.approx(tasks["vad"]["values"][name], abs=1e-6)
            assert left == pytest.approx(max(0, min(100, 100 * (value - lo) / (hi - lo))), abs=0.01)
        assert [g[0] for g in page[1]["gauges"]] == ["V", "A"]
    finally:
        browser.close()
        srv.stop()


def test_page_highlights_the_words_of_an_explanation(server, tmp_path):
    browser = Browser(tmp_path / "profile")
    try:
        browser.open_page(server.url + "/")
        browser.type("#texts", ["i feel happy today"])
        browser.click("#go")
        browser.wait_for("document.querySelectorAll('.result .why').length === 1")
        browser.click(".result .why")
        browser.wait_for("document.querySelectorAll('.result .w').length > 0")
        spans = json.loads(browser.eval("JSON.stringify([...document.querySelectorAll('.result .w')].map(s => "
                                        "[s.textContent, parseFloat(s.dataset.score)]))"))
        want = httpx.post(server.url + "/v1/explain", json={"text": "i feel happy today", "model": "emo"}).json()
        assert [w for w, _ in spans] == [w["word"] for w in want["words"]] == ["i", "feel", "happy", "today"]
        assert [s for _, s in spans] == pytest.approx([w["score"] for w in want["words"]], rel=1e-4, abs=1e-6)
        assert browser.eval("document.querySelector('.result .text').textContent") == "i feel happy today"
    finally:
        browser.close()
