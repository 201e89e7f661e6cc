"""The page at ``GET /`` (service/static/) and ``GET /v1/languages/overlap``.

The browser test drives the page in Debian's headless Chromium through Selenium against a
real ``lass serve`` on the default bundle, so what it finds on the page is real
transcription: an uploaded German clip, and Spanish fed through Chromium's fake
microphone (which loops a WAV file) over ``WS /v1/stream``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jiwer
import numpy as np
import pytest
import soundfile as sf
from safetensors.numpy import load_file

from model.bundle import MASKS
from model.masks import LanguageMasks
from model.train.data.espeak import SAMPLE_RATE, Voice, synthesize
from service.app import create_app
from service.routers.web import ASSETS, STATIC
from service.settings import Settings
from tests.conftest import REPO, Server, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Fresh sentences (in no test list): what the page must show, approximately.
UPLOAD_TEXT, UPLOAD_LANGUAGE = "ich lese am abend ein gutes buch", "de"
MIC_TEXT, MIC_LANGUAGE = "el perro come pan en la cocina", "es"
MAX_CER = 0.35  # the default model: <= 25 % on every fresh test sentence (model card)
# URLs that appear in the page's files but are never fetched: the SVG namespace, and the
# addresses the page names in a message about microphone access.
NOT_FETCHED = {"http://www.w3.org/2000/svg", "http://127.0.0.1", "http://localhost"}

T = TypeVar("T")


# ------------------------------------------------------------------ the page's files


def test_page_and_assets_are_served_with_a_strict_policy(server: Server) -> None:
    page = httpx.get(server.base_url + "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    # Everything the page loads is one of the served assets, and each is served.
    loaded = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {p.removeprefix("/static/") for p in loaded} == {"app.js", "style.css"}
    assert "pcm-worklet.js" in (STATIC / "app.js").read_text()
    for name, media_type in ASSETS.items():
        asset = httpx.get(f"{server.base_url}/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == media_type
        assert asset.content == (STATIC / name).read_bytes()
    assert httpx.head(server.base_url + "/").status_code == 200


@pytest.mark.parametrize(
    "name", ["index.html", "nope.js", "..%2Fapp.py", "%2E%2E%2Frouters%2Fweb.py"]
)
def test_only_listed_assets_are_served(server: Server, name: str) -> None:
    response = httpx.get(f"{server.base_url}/static/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["message"]


def test_page_fetches_nothing_from_elsewhere() -> None:
    """No absolute URL the browser would fetch, no @import or url() in the style sheet."""
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`),]*", text))
        urls |= set(re.findall(r"https?://[^\s\"'`),]+", text))
        assert urls <= NOT_FETCHED, (path.name, urls - NOT_FETCHED)
        if path.suffix == ".css":
            assert "@import" not in text and "url(" not in text


def test_static_files_are_package_data() -> None:
    """service/static has no __init__.py: pyproject's package discovery (namespaces on, its
    default) must still find it, and its package-data patterns must cover every file."""
    import tomllib

    from setuptools import find_namespace_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = config["packages"]["find"]
    assert find.get("namespaces", True)
    assert "service.static" in find_namespace_packages(str(REPO), include=find["include"])
    patterns = config["package-data"]["*"]
    for path in STATIC.iterdir():
        assert f"*{path.suffix}" in patterns, path.name


# ------------------------------------------------------------------ the overlap endpoint


def packed_jaccard(bundle: Path, a: str, b: str) -> float:
    """|a and b| / |a or b| of two languages' masks, counted here from the bundle's file."""
    packed = load_file(str(bundle / MASKS))
    bits_a, bits_b = np.unpackbits(packed[a]), np.unpackbits(packed[b])
    inter = int(np.count_nonzero(bits_a & bits_b))
    union = int(np.count_nonzero(bits_a | bits_b))
    return inter / union


def test_overlap_is_the_masks_jaccard(server: Server, tiny_bundle: Path) -> None:
    body = httpx.get(server.base_url + "/v1/languages/overlap").json()
    languages = body["languages"]
    listed = httpx.get(server.base_url + "/v1/languages").json()["data"]
    served = [entry["code"] for entry in listed]
    assert languages == served and len(languages) == 4
    matrix = np.array(body["jaccard"])
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    np.testing.assert_allclose(matrix, matrix.T)
    for i, a in enumerate(languages):
        for j, b in enumerate(languages[:i]):
            assert matrix[i, j] == pytest.approx(packed_jaccard(tiny_bundle, a, b), abs=1e-6)
    # Random masks keeping 70 % each overlap by about 0.49 / 0.91.
    assert 0.45 < matrix[0, 1] < 0.62
    assert 0 < body["kept_by_all"] < 1 and body["prunable_parameters"] > 0


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    state: Callable[[], object] = lambda: "",
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` and ``state()``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{state()}")
        time.sleep(0.1)


def test_overlap_is_computed_once_per_mask_generation(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    calls: list[int] = []
    original = LanguageMasks.stats

    def counting(self: LanguageMasks) -> Any:
        calls.append(1)
        return original(self)

    monkeypatch.setattr(LanguageMasks, "stats", counting)
    app = create_app(Settings(bundle=tiny_bundle, torch_threads=1, warmup=False))
    with TestClient(app) as client:
        not_ready = client.get("/v1/languages/overlap")  # the model loads in the background
        if not_ready.status_code != 200:
            assert not_ready.status_code == 503
            assert not_ready.json()["error"]["code"] == "not_ready"
        wait_for(lambda: client.get("/health/ready").status_code == 200, 60, "readiness")
        calls.clear()
        first = client.get("/v1/languages/overlap").json()
        assert client.get("/v1/languages/overlap").json() == first
        assert len(calls) == 1
        # A language whose masks are replaced gets a new generation: computed anew.
        masks = app.state.ctx.engine.worker.bundle.masks
        en = {name: masks.get("en", name) for name in masks.shapes}
        masks.remove("en")
        masks.add("en", {name: ~mask for name, mask in en.items()})
        second = client.get("/v1/languages/overlap").json()
        assert len(calls) == 2
        index = second["languages"].index("en")
        assert second["jaccard"][index] != first["jaccard"][index]


# ------------------------------------------------------------------ the page in a browser


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``lass serve`` on the packaged default bundle (LASS_BUNDLE unset), as `make serve`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("LASS_BUNDLE", raising=False)
        server = start_server(
            tmp_path_factory.mktemp("web"), {"LASS_TORCH_THREADS": "1"}, "/health/ready"
        )
    yield server
    stop_server(server)


def spoken_wav(text: str, language: str, path: Path, pad_s: float = 0.0) -> Path:
    """``text`` spoken by espeak-ng, with ``pad_s`` of silence on both sides (16-bit WAV)."""
    samples = synthesize(text, Voice(language))
    pad = np.zeros(int(pad_s * SAMPLE_RATE), dtype=samples.dtype)
    sf.write(str(path), np.concatenate([pad, samples, pad]), SAMPLE_RATE, subtype="PCM_16")
    return path


def start_browser(profile: Path, mic: Path | None = None, deny_mic: bool = False) -> Any:
    """Headless Debian Chromium. Its fake microphone loops ``mic`` (or a beep); with
    ``deny_mic`` every microphone request is refused as a user's click on "Block" would."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        assert binary.exists(), f"{binary} is missing: `make test` installs it (apt)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-', dir=profile)}",
        "--window-size=1280,900",
        "--use-fake-ui-for-media-stream" + ("=deny" if deny_mic else ""),
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ]
    if mic is not None:
        flags.append(f"--use-file-for-fake-audio-capture={mic}")
    for flag in flags:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A driver path given: Selenium Manager is never asked to find (or download) one.
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Chromium whose fake microphone loops a Spanish sentence with 1 s of silence around."""
    mic = spoken_wav(MIC_TEXT, MIC_LANGUAGE, tmp_path / "mic.wav", pad_s=1.0)
    driver = start_browser(tmp_path, mic)
    try:
        yield driver
    finally:
        driver.quit()


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Emulate a screen of ``width`` CSS pixels (a phone's is mobile: its viewport meta)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )


def no_horizontal_overflow(driver: Any) -> tuple[int, int]:
    width, inner = driver.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth]"
    )
    assert width <= inner, f"the page is {width} px wide in a {inner} px viewport"
    return width, inner


def text_of(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(f"return document.getElementById('{element_id}').textContent"))


def shown(driver: Any, element_id: str) -> bool:
    return not driver.execute_script(f"return document.getElementById('{element_id}').hidden")


def page_state(driver: Any) -> str:
    """What the page shows in its messages and transcript, for a failure's message."""
    return json.dumps(
        driver.execute_script(
            "return {status: document.getElementById('status').textContent,"
            " micInfo: document.getElementById('mic-info').textContent,"
            " micError: document.getElementById('mic-error').textContent,"
            " fileError: document.getElementById('file-error').textContent,"
            " seen: window.seen || null}"
        ),
        indent=1,
    )


def cer(reference: str, hypothesis: str) -> float:
    return float(jiwer.cer(reference, hypothesis.strip().lower()))


# Records what the live transcript shows, as it changes, so that a partial that turns
# final between two polls is not missed.
WATCH_TRANSCRIPT = """
window.seen = [];
new MutationObserver(() => {
  for (const li of document.querySelectorAll('#transcript li')) {
    const kind = li.classList.contains('final') ? 'final'
      : li.classList.contains('partial') ? 'partial' : 'pending';
    const text = li.querySelector('.text').textContent;
    const lang = li.querySelector('.lang').textContent;
    const last = window.seen.filter((s) => s.utterance === li.dataset.utterance).pop();
    if (!last || last.kind !== kind || last.text !== text) {
      window.seen.push({utterance: li.dataset.utterance, kind, text, lang});
    }
  }
}).observe(document.getElementById('transcript'),
  {subtree: true, childList: true, characterData: true, attributes: true});
"""


def test_the_page_transcribes_a_file_and_the_microphone(
    default_server: Server, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    base = default_server.base_url
    console: list[dict[str, Any]] = []
    set_viewport(browser, 1280, 900)
    browser.get(base + "/")

    # The method card: every language with its mask figures, an n x n heat map.
    languages = httpx.get(base + "/v1/languages").json()["data"]
    n = len(languages)
    codes = [lang["code"] for lang in languages]
    wait_for(
        lambda: len(browser.find_elements(By.CSS_SELECTOR, "#heatmap .cell")) == n * n,
        30,
        "the heat map",
    )
    assert "ready" in text_of(browser, "status")
    rows = browser.find_elements(By.CSS_SELECTOR, "#languages tbody tr")
    assert [r.get_attribute("data-language") for r in rows] == codes
    assert f"{languages[0]['density'] * 100:.1f} %" in rows[0].text
    options = browser.find_elements(By.CSS_SELECTOR, "#file-language option")
    assert [o.get_attribute("value") for o in options] == ["", *codes]

    # A file: uploaded with the language left automatic; text, language, timings, words.
    clip = spoken_wav(UPLOAD_TEXT, UPLOAD_LANGUAGE, tmp_path / "clip.wav")
    browser.find_element(By.ID, "file-input").send_keys(str(clip))
    browser.find_element(By.ID, "file-button").click()
    wait_for(lambda: shown(browser, "file-result") or shown(browser, "file-error"), 30, "a result")
    assert not shown(browser, "file-error"), text_of(browser, "file-error")
    page_text = text_of(browser, "file-text")
    assert cer(UPLOAD_TEXT, page_text) <= MAX_CER, page_text
    assert browser.find_element(By.ID, "file-lang").get_attribute("data-code") == UPLOAD_LANGUAGE
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", text_of(browser, "file-took"))
    words = browser.find_elements(By.CSS_SELECTOR, "#words .word")
    assert len(words) >= 5
    starts = [float(w.get_attribute("data-start")) for w in words]
    assert starts == sorted(starts) and starts[-1] > 0.5
    # Clicking a word plays the uploaded audio from there.
    words[3].click()
    position = wait_for(
        lambda: browser.execute_script(
            "const p = document.getElementById('player'); return p.paused ? 0 : p.currentTime"
        ),
        10,
        "playback from the clicked word",
    )
    assert position >= starts[3] - 0.05
    browser.execute_script("document.getElementById('player').pause()")

    # The microphone: partial text that settles into a final line, with its language.
    browser.execute_script(WATCH_TRANSCRIPT)
    browser.find_element(By.ID, "mic-button").click()
    final = wait_for(
        lambda: next(
            (s for s in browser.execute_script("return window.seen") if s["kind"] == "final"),
            None,
        ),
        45,
        "a final line from the microphone",
        lambda: page_state(browser) + json.dumps(browser.get_log("browser"), indent=1),
    )
    browser.find_element(By.ID, "mic-button").click()  # stop
    wait_for(lambda: text_of(browser, "mic-info").startswith("Done:"), 30, "the summary")
    wait_for(lambda: text_of(browser, "mic-button").strip() == "Start recording", 10, "the stop")
    assert not shown(browser, "mic-error"), text_of(browser, "mic-error")
    seen = browser.execute_script("return window.seen")
    first = [s for s in seen if s["utterance"] == final["utterance"]]
    partials = [s for s in first if s["kind"] == "partial" and s["text"]]
    assert partials, seen
    assert first.index(partials[0]) < first.index(final)
    assert final["lang"] == MIC_LANGUAGE
    assert cer(MIC_TEXT, final["text"]) <= MAX_CER, final

    # Layout: a phone's width and a desktop's, with everything filled in.
    set_viewport(browser, 375, 800)
    no_horizontal_overflow(browser)
    browser.save_screenshot(str(tmp_path / "web-page-375.png"))
    set_viewport(browser, 1280, 900)
    no_horizontal_overflow(browser)

    # The screenshot (the whole page at a desktop's width).
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    set_viewport(browser, 1280, height)
    shot = tmp_path / "web-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("LASS_WEB_SCREENSHOT"):  # how docs/images/web-page.png is made
        Path(os.environ["LASS_WEB_SCREENSHOT"]).write_bytes(shot.read_bytes())
    set_viewport(browser, 1280, 900)
    console += browser.get_log("browser")

    # A server error is shown as the server's message: a file that is not audio.
    junk = tmp_path / "notes.wav"
    junk.write_text("these are notes, not audio\n" * 20)
    expected = httpx.post(
        base + "/v1/audio/transcriptions",
        files={"file": ("notes.wav", junk.read_bytes(), "audio/wav")},  # as Chromium sends it
    ).json()["error"]["message"]
    browser.find_element(By.ID, "file-input").send_keys(str(junk))
    browser.find_element(By.ID, "file-button").click()
    wait_for(lambda: shown(browser, "file-error"), 30, "the upload's error")
    assert text_of(browser, "file-error") == expected

    # No JavaScript error all along; the one failed request is the refused upload's.
    console += browser.get_log("browser")
    severe = [
        entry
        for entry in console
        if entry["level"] == "SEVERE"
        and not (entry["source"] == "network" and "/v1/audio/transcriptions" in entry["message"])
    ]
    assert not severe, json.dumps(severe, indent=1)


def test_a_refused_microphone_is_explained(server: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = start_browser(tmp_path, deny_mic=True)
    try:
        driver.get(server.base_url + "/")
        driver.find_element(By.ID, "mic-button").click()
        wait_for(lambda: shown(driver, "mic-error"), 10, "the refusal", lambda: page_state(driver))
        assert "denied" in text_of(driver, "mic-error")
        assert text_of(driver, "mic-button").strip() == "Start recording"
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
