"""Screenshots of the shipped workflows in the real ComfyUI page (headless Chromium): one per template in docs/
(``docs/workflow_<name>.png``, the README shows the tiny demo's) and the template browser's thumbnail next to each
workflow (``workflows/<name>.jpg``); the tiny demo is shot after a run (previews and status texts filled). A
documentation tool, not part of the pack; refresh after changing a workflow:

    .venv/bin/python docs/screenshot.py            (every workflow in workflows/)
    .venv/bin/python docs/screenshot.py NAME ...   (only these, e.g. tiny_puppet_demo)

Needs a ComfyUI checkout, Chromium and playwright, as tests/comfyui/test_browser.py (tests/comfyui/browser.py).
ComfyUI runs headless on CPU on a free localhost port with --base-directory set to a temp dir whose custom_nodes/
links to this repo (the checkout is not modified), exactly like the tests; each workflow is opened from the
template browser, as a user does.
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfyui"))

import browser  # noqa: E402  (the tests' page driver)
import harness  # noqa: E402  (the tests' ComfyUI locator)

THUMB = 512  # px, square (the template browser crops its cards to squares)
RUN = ("tiny_puppet_demo",)  # shot after a Run-button run: its previews and status texts are filled


def run_and_wait(page, url: str, timeout: float = 170) -> None:
    """Press Run and wait for the prompt to finish (the server's /history), then for the previews to show."""
    before = set(json.loads(urllib.request.urlopen(url + "/history", timeout=10).read()))
    page.get_by_role("button", name="Run", exact=True).first.click()
    t0 = time.time()
    while time.time() - t0 < timeout:
        hist = json.loads(urllib.request.urlopen(url + "/history", timeout=10).read())
        if any(k not in before and v.get("status", {}).get("completed") for k, v in hist.items()):
            page.wait_for_timeout(3000)  # the videos load and start
            return
        time.sleep(1)
    raise SystemExit(f"the run did not finish in {timeout} s")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = argv or sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    comfy = harness.comfy_dir()
    if not (comfy / "main.py").is_file():
        print(f"no ComfyUI checkout at {comfy} (set COMFYUI_PATH)", file=sys.stderr)
        return 2
    why = browser.missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="imanim_shot_"))
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / browser.PACK, target_is_directory=True)
    client = harness.launch(base)
    url = client.url
    try:
        why = harness.start_error(client)
        if why:
            print(why, file=sys.stderr)
            return 1
        from PIL import Image

        browser.set_setting(url, "Comfy.Workflow.ShowMissingModelsWarning", False)  # wan21: no dialog on the shot
        with browser.page_at(url) as (page, _):
            for name in names:
                nodes = json.loads((REPO / "workflows" / f"{name}.json").read_text())["nodes"]
                browser.load_template(page, name, len(nodes))
                browser.close_dialogs(page)
                page.wait_for_timeout(1000)
                if name in RUN:
                    run_and_wait(page, url)
                shot = REPO / "docs" / f"workflow_{name}.png"
                page.screenshot(path=str(shot))  # the saved view of the workflow, as it opens
                page.focus("#graph-canvas")
                page.keyboard.press(".")  # ComfyUI's "fit view to the whole graph" for the thumbnail
                page.wait_for_timeout(1000)
                img = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
                w, h = img.size
                side = min(w - 60, h - 40)  # right of the sidebar, below the tab bar
                x0, y0 = 60 + (w - 60 - side) // 2, 40 + (h - 40 - side) // 2
                thumb = img.crop((x0, y0, x0 + side, y0 + side)).resize((THUMB, THUMB), Image.LANCZOS)
                jpg = REPO / "workflows" / f"{name}.jpg"
                thumb.save(jpg, quality=82, optimize=True)
                print(f"wrote {shot.relative_to(REPO)}, {jpg.relative_to(REPO)}")
        return 0
    finally:
        harness.stop_server(client)


if __name__ == "__main__":
    raise SystemExit(main())
