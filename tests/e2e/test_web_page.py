"""The web page in headless Chromium (Debian's package, driven by selenium and the system chromedriver) against
the real local stack: search, facets, detail with boxes, similar/duplicates/same person, upload by drag and
drop (and an unreadable one), query by image, delete, and a phone-width screen.

Screenshots of each view go to $PIXDEX_SCREENSHOT_DIR when it is set (docs/screenshots in the README's
command), else to a temporary folder."""

from __future__ import annotations

import base64
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from pixdex.document import document_id
from pixdex.packages import package_dir
from tests import imagegen
from tests.e2e.conftest import RunningStack, start_stack, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

WAIT_S = 60.0
DESKTOP = (1366, 900)
PHONE = (390, 844)


def _missing(reason: str) -> None:
    # CI installs the browser (.ci/browser): there a missing part is a failure, not a skip.
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {reason}")
    pytest.skip(f"browser tests need {reason} (apt-get install chromium chromium-driver; pip install -e '.[browser]')")


def _browser_paths() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    # Debian puts chromedriver in /usr/bin; some images keep it off PATH.
    driver = shutil.which("chromedriver") or shutil.which("chromedriver", path="/usr/lib/chromium:/usr/bin")
    if browser is None or driver is None:
        _missing("Debian's chromium and chromium-driver packages")
    assert browser is not None and driver is not None
    return browser, driver


def _sample(name: str) -> bytes:
    skimage = package_dir("skimage")
    if skimage is None:
        pytest.skip("scikit-image (its sample photos) is not installed")
    return (skimage / "data" / name).read_bytes()


def _jpeg(data: bytes, scale: float = 1.0) -> bytes:
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


SEED_OBJECTS: dict[str, Callable[[], bytes]] = {
    "people/astronaut.png": lambda: _sample("astronaut.png"),
    # The same person again, smaller and re-encoded: a near copy and a same-person match.
    "people/astronaut-small.jpg": lambda: _jpeg(_sample("astronaut.png"), 0.6),
    "docs/page.png": lambda: _sample("page.png"),
    "kitchen/coffee.png": lambda: _sample("coffee.png"),
    # Byte-identical copy: an exact duplicate.
    "backup/coffee-copy.png": lambda: _sample("coffee.png"),
    "pets/chelsea.png": lambda: _sample("chelsea.png"),
    "trips/Beach Sunset.jpg": lambda: imagegen.jpeg_bytes(1200, 800, seed=4),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    _browser_paths()
    try:
        import selenium  # noqa: F401
    except ImportError:
        _missing("selenium (pip install -e '.[browser]')")
    running = start_stack(tmp_path_factory.mktemp("web") / "data",
                          env_extra={"PIXDEX_CAPABILITIES": "classify,embed,caption,ocr,safety,faces,clip"})
    try:
        running.upload_and_wait({key: make() for key, make in SEED_OBJECTS.items()}, timeout=240)
        yield running
    finally:
        stop_stack(running)




@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("PIXDEX_SCREENSHOT_DIR")
    folder = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser(site: RunningStack) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_window_size(*DESKTOP)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------------------
# helpers


def _wait(driver: Any, predicate: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(predicate)
    except TimeoutException:
        status = driver.execute_script("return document.querySelector('#status')?.textContent")
        error = driver.execute_script("return document.querySelector('#error')?.textContent")
        uploads = driver.execute_script("return document.querySelector('#uploads')?.innerText")
        raise AssertionError(f"timed out waiting for {what}; status={status!r} error={error!r} "
                             f"uploads={uploads!r} console={_console_errors(driver)!r}") from None


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _keys(driver: Any) -> list[str]:
    # Read in one script: the grid is re-rendered under us while a wait polls.
    keys: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#grid .card')].map((c) => c.dataset.key)")
    return keys


def _idle(driver: Any) -> bool:
    return bool(driver.execute_script("return !document.querySelector('#status').textContent.endsWith('…')"))


def _open(driver: Any, site: RunningStack, fragment: str = "") -> None:
    driver.get("about:blank")  # a new fragment alone would not load the page again
    driver.get(site.api + "/" + fragment)
    _wait(driver, lambda d: _css(d, "#grid .card") and _idle(d), "the first page of results")


def _drop(driver: Any, selector: str, name: str, content_type: str, data: bytes) -> None:
    """A real drop event carrying a file, as a person dragging it from their desktop makes."""
    driver.execute_script("""
        const [selector, name, type, b64] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type }));
        const target = document.querySelector(selector);
        for (const kind of ["dragenter", "dragover", "drop"]) {
          target.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: dt }));
        }
    """, selector, name, content_type, base64.b64encode(data).decode())


def _open_card(driver: Any, key: str) -> None:
    button = next(c for c in _css(driver, "#grid .card") if c.get_attribute("data-key") == key)
    button.find_element("css selector", ".card-open").click()
    _wait(driver, lambda d: d.execute_script("return document.querySelector('#detail').open")
          and d.find_element("css selector", "#detail-title").text == key.rsplit("/", 1)[-1], f"detail of {key}")


def _close_detail(driver: Any) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.find_element("css selector", "#detail").send_keys(Keys.ESCAPE)
    _wait(driver, lambda d: not d.execute_script("return document.querySelector('#detail').open"), "detail closed")


def _console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


# ---------------------------------------------------------------------------------------------------------
# tests (in page order; they share one stack and one browser)


def test_page_served_by_the_stack_with_its_own_assets(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    assert sorted(_keys(browser)) == sorted(SEED_OBJECTS)
    # Every script, style and icon comes from pixdex itself; images from the local S3 endpoint.
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
    assert set(origins) <= {site.api, site.aws_endpoint}
    facet_names = [f.get_attribute("data-facet") for f in _css(browser, "#facet-groups .facet")]
    assert {"labels", "format", "year"} <= set(facet_names)
    assert _console_errors(browser) == []
    browser.save_screenshot(str(shots / "grid-desktop.png"))


def test_grid_pages_as_it_scrolls(site: RunningStack, browser: Any) -> None:
    # A short phone screen and pages of two: the first pages fill the screen, the rest come on scrolling.
    browser.set_window_size(PHONE[0], 560)
    try:
        _open(browser, site, "#size=2")
        seen = len(_keys(browser))
        assert 2 <= seen < len(SEED_OBJECTS)
        while seen < len(SEED_OBJECTS):
            browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
            _wait(browser, lambda d, n=seen: len(_keys(d)) > n and _idle(d), f"more than {seen} cards after scrolling")
            seen = len(_keys(browser))
        assert sorted(_keys(browser)) == sorted(SEED_OBJECTS)
        assert f"{len(SEED_OBJECTS)} of {len(SEED_OBJECTS)}" in browser.find_element("id", "status").text
    finally:
        browser.set_window_size(*DESKTOP)


def test_keyword_search_and_mode_switch(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    browser.find_element("css selector", "label[for=mode-keyword]").click()
    box = browser.find_element("id", "q")
    box.clear()
    box.send_keys("sunset\n")
    _wait(browser, lambda d: _keys(d) == ["trips/Beach Sunset.jpg"] and _idle(d), "keyword hit for sunset")
    score = browser.find_element("css selector", "#grid .card .score").text
    assert float(score) > 0
    assert "keyword" in browser.current_url
    # Semantic: by meaning; the cat photo answers "cat" though no word of it says so.
    browser.find_element("css selector", "label[for=mode-semantic]").click()
    box.clear()
    box.send_keys("a cat\n")
    _wait(browser, lambda d: _keys(d)[:1] == ["pets/chelsea.png"] and _idle(d), "semantic hit for a cat")
    browser.save_screenshot(str(shots / "search-semantic.png"))


def test_filter_by_facet_and_filters(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    jpeg = browser.find_element("css selector", "#facet-groups input[data-facet=format][value=jpeg]")
    jpeg.click()
    expected = sorted(k for k in SEED_OBJECTS if k.endswith(".jpg"))
    _wait(browser, lambda d: sorted(_keys(d)) == expected and _idle(d), "only JPEGs")
    chips = [c.text for c in _css(browser, "#active-filters .chip")]
    assert any("jpeg" in c for c in chips)
    browser.save_screenshot(str(shots / "facet-format.png"))
    # Removing the chip lifts the filter.
    _css(browser, "#active-filters .chip")[0].click()
    _wait(browser, lambda d: len(_keys(d)) == len(SEED_OBJECTS) and _idle(d), "all images again")
    # "Has text" keeps the page scan, which OCR read.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "f-has-text")).select_by_value("true")
    browser.find_element("css selector", "#filters button[type=submit]").click()
    _wait(browser, lambda d: "docs/page.png" in _keys(d) and "pets/chelsea.png" not in _keys(d) and _idle(d),
          "images with text")
    browser.find_element("id", "filters-reset").click()
    _wait(browser, lambda d: len(_keys(d)) == len(SEED_OBJECTS) and _idle(d), "filters cleared")


def test_detail_with_text_boxes_labels_and_derivatives(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    _open_card(browser, "docs/page.png")
    _wait(browser, lambda d: _css(d, "#overlay polygon.ocr-box"), "OCR boxes drawn")
    assert browser.find_element("id", "detail-ocr").text.strip() not in ("", "No text found.")
    assert _css(browser, "#detail-labels meter"), "labels come with their scores"
    rows = [r.text for r in _css(browser, "#detail-derivs tr")]
    assert any(r.startswith("thumbnail") for r in rows) and any(r.startswith("preview") for r in rows)
    assert "Bytes saved" in browser.find_element("id", "detail-saved").text
    # The boxes lie over the picture: the overlay has the image's rendered size.
    img = browser.find_element("id", "detail-img").rect
    overlay = browser.find_element("id", "overlay").rect
    assert abs(img["width"] - overlay["width"]) < 2 and abs(img["height"] - overlay["height"]) < 2
    browser.save_screenshot(str(shots / "detail-ocr.png"))
    _close_detail(browser)


def test_faces_same_person_similar_and_duplicates(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    _open_card(browser, "people/astronaut.png")
    _wait(browser, lambda d: _css(d, "#overlay rect.face-box"), "face box drawn")
    browser.save_screenshot(str(shots / "detail-faces.png"))
    browser.find_element("id", "act-person").click()
    _wait(browser, lambda d: "people/astronaut-small.jpg" in _keys(d) and _idle(d), "same person found")
    assert "people/astronaut.png" not in _keys(browser)

    _open_card(browser, "people/astronaut-small.jpg")
    browser.find_element("id", "act-duplicates").click()
    _wait(browser, lambda d: _keys(d) == ["people/astronaut.png"] and _idle(d), "near copy found")

    _open_card(browser, "people/astronaut.png")
    browser.find_element("id", "act-similar").click()
    _wait(browser, lambda d: len(_keys(d)) == len(SEED_OBJECTS) - 1 and _idle(d), "similar images")
    assert _keys(browser)[0] == "people/astronaut-small.jpg"

    _open(browser, site)
    _open_card(browser, "kitchen/coffee.png")
    browser.find_element("id", "act-duplicates").click()
    _wait(browser, lambda d: _keys(d) == ["backup/coffee-copy.png"] and _idle(d), "exact copy found")
    assert browser.find_element("css selector", "#grid .card .score").text == "exact copy"
    browser.save_screenshot(str(shots / "duplicates.png"))


def test_upload_by_drop_appears_and_is_searchable(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    photo = imagegen.jpeg_bytes(900, 600, seed=11)
    _drop(browser, "#dropzone", "Harbour Lighthouse.jpg", "image/jpeg", photo)
    _wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#uploads li')].some((li) => li.dataset.state === 'busy')"),
        "upload shown as in progress", timeout=10)
    _wait(browser, lambda d: d.execute_script(
        "return document.querySelector('#uploads li[data-state=done]')?.textContent || ''").startswith(
        "Harbour Lighthouse.jpg"), "upload searchable", timeout=180)
    _wait(browser, lambda d: any(k.endswith("/Harbour Lighthouse.jpg") for k in _keys(d)) and _idle(d),
          "uploaded photo in the grid")
    box = browser.find_element("id", "q")
    box.clear()
    browser.find_element("css selector", "label[for=mode-keyword]").click()
    box.send_keys("lighthouse\n")
    _wait(browser, lambda d: [k.rsplit("/", 1)[-1] for k in _keys(d)] == ["Harbour Lighthouse.jpg"] and _idle(d),
          "uploaded photo found by name")
    browser.save_screenshot(str(shots / "upload.png"))


def test_unreadable_upload_says_why(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    _drop(browser, "#dropzone", "holiday.jpg", "image/jpeg", imagegen.garbage_bytes(4096, seed=3))
    row = _wait(browser, lambda d: d.execute_script(
        "return document.querySelector('#uploads li[data-state=error]')?.textContent || ''"),
        "the upload's failure", timeout=180)
    assert "holiday.jpg" in row
    # The pipeline's own reason, not a generic failure.
    assert "Could not process" in row and "image" in row.lower()
    browser.save_screenshot(str(shots / "upload-error.png"))
    # A file that is no image at all is refused before it is sent.
    _drop(browser, "#dropzone", "notes.txt", "text/plain", b"hello")
    _wait(browser, lambda d: "not an image" in d.execute_script(
        "return document.querySelector('#uploads li')?.textContent || ''"), "the text file refused", timeout=10)


def test_query_by_dropping_an_image_on_the_search_box(site: RunningStack, browser: Any, shots: Path) -> None:
    _open(browser, site)
    _drop(browser, "#q", "my cat.png", "image/png", _sample("chelsea.png"))
    _wait(browser, lambda d: _keys(d)[:1] == ["pets/chelsea.png"] and _idle(d), "the cat found by image")
    assert "my cat.png" in browser.find_element("id", "status").text
    browser.save_screenshot(str(shots / "query-by-image.png"))


def test_delete_from_detail(site: RunningStack, browser: Any) -> None:
    _open(browser, site)
    _open_card(browser, "backup/coffee-copy.png")
    browser.find_element("id", "act-delete").click()
    browser.switch_to.alert.accept()
    _wait(browser, lambda d: "backup/coffee-copy.png" not in _keys(d) and "Deleted" in d.find_element(
        "id", "status").text, "card removed after delete", timeout=120)
    doc_id = document_id(site.originals_bucket, "backup/coffee-copy.png")
    assert site.get(f"/images/{doc_id}")[0] == 404
    _open(browser, site)
    assert "backup/coffee-copy.png" not in _keys(browser)


def test_keyboard_only_opens_and_closes_detail(site: RunningStack, browser: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open(browser, site)
    first = _css(browser, "#grid .card-open")[0]
    first.send_keys(Keys.ENTER)
    _wait(browser, lambda d: d.execute_script("return document.querySelector('#detail').open"), "detail by keyboard")
    assert browser.switch_to.active_element.get_attribute("id") == "detail-close"
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    _wait(browser, lambda d: not d.execute_script("return document.querySelector('#detail').open"), "closed by Esc")
    # Every control has a name a screen reader can say.
    unnamed = browser.execute_script("""
        return [...document.querySelectorAll('input, select, textarea, button')].filter((e) => {
          if (e.type === 'hidden') return false;
          const labelled = (e.labels && e.labels.length) || e.getAttribute('aria-label') || e.textContent.trim();
          return !labelled;
        }).map((e) => e.id || e.outerHTML.slice(0, 60));
    """)
    assert unnamed == []


def test_phone_width(site: RunningStack, browser: Any, shots: Path) -> None:
    browser.set_window_size(*PHONE)
    try:
        _open(browser, site)
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= PHONE[0], f"the page scrolls sideways at phone width ({width}px)"
        assert not browser.find_element("id", "sidebar").is_displayed()
        browser.save_screenshot(str(shots / "grid-phone.png"))
        browser.find_element("id", "filters-toggle").click()
        assert browser.find_element("id", "sidebar").is_displayed()
        browser.save_screenshot(str(shots / "filters-phone.png"))
        browser.find_element("id", "filters-toggle").click()
        _open_card(browser, "people/astronaut.png")
        _wait(browser, lambda d: _css(d, "#overlay rect.face-box"), "face box drawn")
        browser.save_screenshot(str(shots / "detail-phone.png"))
        _close_detail(browser)
    finally:
        browser.set_window_size(*DESKTOP)
