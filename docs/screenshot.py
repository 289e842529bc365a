"""Take the README's screenshot: a workflow of workflows/ loaded in the real ComfyUI page, in headless Chromium.

A documentation tool, not part of the pack. Needs a ComfyUI checkout (as for tests/comfyui), Chromium
(`apt-get install chromium`) and the `playwright` Python package in the ComfyUI test environment
(`.venv-comfyui/bin/pip install playwright`; its own browser download is not used — we point it at Chromium):

    .venv-comfyui/bin/python docs/screenshot.py [workflows/tiny_puppet_demo.json] [docs/workflow_tiny_puppet_demo.png]

ComfyUI runs headless on CPU on a free localhost port with --base-directory set to a temp dir whose
custom_nodes/ links to this repo (the checkout is not modified), exactly like the tests.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "comfyui"))

import harness  # noqa: E402  (the tests' ComfyUI locator and client)


def main(argv=None) -> int:
    import subprocess
    import urllib.request

    argv = list(sys.argv[1:] if argv is None else argv)
    workflow = Path(argv[0] if argv else REPO / "workflows" / "tiny_puppet_demo.json")
    out = Path(argv[1] if len(argv) > 1 else REPO / "docs" / f"workflow_{workflow.stem}.png")
    comfy = harness.comfy_dir()
    if not (comfy / "main.py").is_file():
        print(f"no ComfyUI checkout at {comfy} (set COMFYUI_PATH)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="imanim_shot_"))
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / "comfyui-im-animation", target_is_directory=True)
    port = harness._free_port()
    log = open(base / "comfyui.log", "w")
    proc = subprocess.Popen([harness.comfy_python(), str(REPO / "tests" / "comfyui" / "launch.py"), str(comfy),
                             "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base)],
                            cwd=str(comfy), stdout=log, stderr=subprocess.STDOUT, env=harness.subprocess_env())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url + "/object_info", timeout=5).read()
                break
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        else:
            print("ComfyUI did not start; see", base / "comfyui.log", file=sys.stderr)
            return 1
        from playwright.sync_api import sync_playwright

        # a first visit opens the template browser; a screenshot wants the plain canvas
        for key, value in (("Comfy.TutorialCompleted", True), ("Comfy.Workflow.ShowMissingModelsWarning", False)):
            req = urllib.request.Request(f"{url}/settings/{key}", data=json.dumps(value).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).read()

        graph = json.loads(workflow.read_text())
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"), args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("window.app && window.app.graph", timeout=120_000)
            page.wait_for_timeout(2000)
            page.evaluate("async (g) => { await window.app.loadGraphData(g); }", graph)
            page.wait_for_timeout(2000)
            page.focus("#graph-canvas")
            page.keyboard.press(".")  # ComfyUI's "fit view to the whole graph"
            page.wait_for_timeout(1500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
        print(f"wrote {out}")
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
