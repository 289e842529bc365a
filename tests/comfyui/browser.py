"""The real ComfyUI frontend in headless Chromium (playwright driving Debian's ``chromium``), shared by the browser
test (test_browser.py) and the screenshot script (docs/screenshot.py).

Chromium: ``$CHROMIUM`` or ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it when
absent). Playwright's own browser download is never used.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.request
from contextlib import contextmanager

PACK = "comfyui-im-animation"  # the pack's folder name under custom_nodes/ (the template browser's category)
VIEWPORT = {"width": 1600, "height": 1000}


def chromium_path() -> str | None:
    p = os.environ.get("CHROMIUM") or "/usr/bin/chromium"
    return p if os.path.isfile(p) and os.access(p, os.X_OK) else shutil.which("chromium")


def missing() -> str | None:
    """Why the browser cannot run here (None when it can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (scripts/setup.sh --dev installs it)"
    if not chromium_path():
        return "no Chromium at $CHROMIUM or /usr/bin/chromium (apt-get install chromium)"
    return None


def set_setting(url: str, key: str, value) -> None:
    req = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


@contextmanager
def page_at(url: str):
    """A Chromium page with the ComfyUI app loaded at ``url``; yields (page, console errors list)."""
    from playwright.sync_api import sync_playwright

    set_setting(url, "Comfy.TutorialCompleted", True)  # no template browser popping up on the first visit
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            errors: list = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.wait_for_timeout(1000)
            yield page, errors
        finally:
            browser.close()


def open_dialogs(page) -> list:
    """The text of every dialog open on the page (missing nodes, missing models, errors...)."""
    return page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog'))"
                         ".filter(d => d.offsetParent !== null).map(d => d.innerText)")


def close_dialogs(page) -> None:
    for _ in range(3):
        if not open_dialogs(page):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


def load_template(page, name: str, node_count: int) -> None:
    """Open the template browser from the sidebar, pick the pack's category and click the template ``name``, the
    way a user does; waits until the graph holds the workflow's ``node_count`` nodes."""
    close_dialogs(page)
    page.get_by_role("button", name="Templates").first.click()
    dialog = page.locator(".p-dialog").filter(has_text=PACK)  # the template browser (not the workflow tabs)
    dialog.get_by_text(PACK, exact=True).first.click()
    dialog.get_by_text(name, exact=True).first.click()
    page.wait_for_function("(n) => window.app.graph.nodes.length === n", arg=node_count, timeout=60_000)
    page.wait_for_timeout(1500)


def graph_nodes(page) -> list:
    """[{id, type, title, registered}] of the loaded graph."""
    return page.evaluate("""() => window.app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title,
        registered: !!(window.LiteGraph && window.LiteGraph.registered_node_types[n.type])}))""")
