"""The watch dashboard in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import time
from types import SimpleNamespace

import pytest
from browser_helpers import (
    BROWSER_MARKS,
    CHROMIUM,
    CHROMIUM_ARGS,
    import_playwright,
    running_server,
)
from conftest import face_array
from monitoring_helpers import NoDetector

pytestmark = BROWSER_MARKS
playwright_sync = import_playwright()
pytest.importorskip("uvicorn")
pytest.importorskip("sqlalchemy")

from maskwatch.imaging import save_rgb  # noqa: E402
from maskwatch.monitoring.store import Store  # noqa: E402
from maskwatch.serving.app import Settings, create_app  # noqa: E402


def _history(tmp_path) -> SimpleNamespace:
    """Four hours at two doors: the front door always masked, the back door half."""
    db, snaps = tmp_path / "history.sqlite", tmp_path / "snaps"
    store = Store(db)
    store.set_meta("snapshots_dir", str(snaps))
    now = time.time()
    rows = []
    for hour in range(4):
        for i in range(4):
            t = now - 3 * 3600 + hour * 3600 - 60 * i - 300
            rows.append({"source": "front", "track_id": len(rows), "label": "with_mask",
                         "first_seen": t, "last_seen": t + 4, "frames": 20, "score": 0.9})
            rows.append({"source": "back", "track_id": len(rows),
                         "label": "without_mask" if i % 2 else "with_mask",
                         "first_seen": t, "last_seen": t + 6, "frames": 30, "score": 0.8})
    snap = snaps / "back" / "latest.jpg"
    save_rgb(snap, face_array(3, size=96))
    rows.append({"source": "back", "track_id": 99, "label": "without_mask",
                 "first_seen": now - 30, "last_seen": now - 20, "frames": 40, "score": 0.95,
                 "snapshot": str(snap)})
    store.add_events(rows)
    return SimpleNamespace(db=db, store=store, rows=rows)


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


def _updates(page) -> int:
    return int(page.get_attribute("#dash", "data-updates"))


def test_dashboard_draws_history_and_refreshes_itself(browser, tmp_path):
    history = _history(tmp_path)
    app = create_app(detector=NoDetector(), settings=Settings(db=str(history.db)))
    with running_server(app) as url:
        page = browser.new_page(viewport={"width": 1100, "height": 1400})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "dashboard?refresh=1")
        page.wait_for_function("() => +document.getElementById('dash').dataset.updates >= 1",
                               timeout=15000)
        # the chart: one line per source, drawn in the page (no external script)
        series = page.locator("#chart svg path.series")
        assert sorted(series.evaluate_all("ps => ps.map(p => p.dataset.source)")) == [
            "back", "front"]
        assert page.locator("#chart svg circle").count() >= 8
        front_y = page.evaluate("() => [...document.querySelectorAll('#chart circle')]"
                                ".filter(c => c.getAttribute('fill') === "
                                "document.querySelector('path[data-source=front]')"
                                ".getAttribute('stroke')).map(c => +c.getAttribute('cy'))")
        assert len(set(front_y)) == 1  # 100 % every hour: a flat line at the top
        assert page.locator("#legend li").all_inner_texts() == ["back", "front"]
        # people per class over the period
        with_mask = page.locator("#counts tr[data-label=with_mask] td.total").inner_text()
        without = page.locator("#counts tr[data-label=without_mask] td.total").inner_text()
        assert (int(with_mask), int(without)) == (24, 9)
        # latest events, the newest first, with its snapshot
        rows = page.locator("#events tbody tr")
        assert rows.count() == 25
        first = rows.first
        assert first.get_attribute("data-label") == "without_mask"
        assert "#99" in first.inner_text()
        page.wait_for_function("() => { const i = document.querySelector('#events tbody tr img');"
                               " return i && i.complete && i.naturalWidth === 96; }",
                               timeout=5000)
        # it refreshes by itself: a new person shows without a reload
        new_id = history.store.add_events([{
            "source": "front", "track_id": 100, "label": "with_mask", "first_seen": time.time(),
            "last_seen": time.time() + 1, "frames": 12, "score": 0.97}])[0]
        page.wait_for_selector(f"#events tbody tr[data-id='{new_id}']", timeout=10000)
        # one source, the last hour
        page.select_option("#source", "back")
        page.select_option("#period", "hour")
        page.wait_for_function(
            "() => { const d = document.getElementById('dash').dataset;"
            " return d.source === 'back' && d.period === 'hour'; }", timeout=10000)
        assert page.locator("#chart svg path.series").count() == 1
        # per minute over the last hour: four people in the last 10 minutes, and #99
        assert page.locator("#chart svg circle").count() == 5
        assert page.locator("#counts tr[data-label=without_mask] td.total").inner_text() == "3"
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("MASKWATCH_SCREENSHOT_DASHBOARD"):
            shutil.copy(shot, os.environ["MASKWATCH_SCREENSHOT_DASHBOARD"])
        assert errors == []
        page.close()


def test_dashboard_asks_for_the_api_key(browser, tmp_path):
    history = _history(tmp_path)
    app = create_app(detector=NoDetector(),
                     settings=Settings(db=str(history.db), api_key="door-key"))
    with running_server(app) as url:
        page = browser.new_page()
        page.goto(url + "dashboard")
        page.wait_for_selector("#key-form:not([hidden])", timeout=10000)
        assert _updates(page) == 0
        assert page.is_hidden("#key-message")  # no key given yet: nothing was refused
        page.fill("#key-input", "wrong-key")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_selector("#key-message:not([hidden])", timeout=10000)
        assert "refused" in page.inner_text("#key-message") and page.is_visible("#key-form")
        page.fill("#key-input", "door-key")
        page.get_by_role("button", name="Use key").click()
        page.wait_for_function("() => +document.getElementById('dash').dataset.updates >= 1",
                               timeout=10000)
        assert page.locator("#events tbody tr").count() == 25
        # the snapshot came through the key header, as a blob
        page.wait_for_function("() => { const i = document.querySelector('#events tbody tr img');"
                               " return i && i.src.startsWith('blob:') && i.naturalWidth > 0; }",
                               timeout=5000)
        page.close()
