"""Helpers of the ComfyUI test harness: where ComfyUI and its Python are, a small HTTP client."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
MIN_VERSION = (0, 8, 0)
START_TIMEOUT = 240


def comfy_dir() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or "~/comfy/ComfyUI").expanduser()


def comfy_python() -> str:
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv = REPO / ".venv-comfyui" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def subprocess_env() -> dict:
    """Environment of the server and helper processes: one torch thread unless OMP_NUM_THREADS is set."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _version(d: Path):
    try:
        m = re.search(r'__version__\s*=\s*"([0-9.]+)"', (d / "comfyui_version.py").read_text())
        return tuple(int(x) for x in m.group(1).split("."))
    except Exception:  # noqa: BLE001
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, url: str, base: Path, proc: subprocess.Popen, log: Path):
        self.url, self.base, self.proc, self.log = url, base, proc, log
        self._object_info = None

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.load(r)

    def post(self, path: str, data=None, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    @property
    def object_info(self) -> dict:
        if self._object_info is None:
            self._object_info = self.get("/object_info", timeout=60)
        return self._object_info

    def alive(self) -> bool:
        try:
            return "IMAnimationSampler" in self.get("/object_info/IMAnimationSampler", timeout=10)
        except Exception:  # noqa: BLE001
            return False

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt})
        assert status == 200, f"/prompt refused the prompt: {json.dumps(body)[:2000]}"
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 240) -> dict:
        t0 = time.time()
        while time.time() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h:
                st = h[prompt_id].get("status", {})
                if st.get("completed") or st.get("status_str") == "error":
                    return h[prompt_id]
            if self.proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with code {self.proc.returncode}:\n{tail(self.log)}")
            time.sleep(0.25)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run(self, prompt: dict, timeout: float = 240) -> tuple:
        t0 = time.time()
        h = self.wait(self.queue(prompt), timeout)
        return h, time.time() - t0


def launch(base: Path) -> Client:
    """Start ComfyUI's main.py headless on CPU (``launch.py``) on a free localhost port, ``--base-directory`` =
    ``base`` (its custom_nodes/ links this repo), log in ``base/comfyui.log``; returns at once (see
    :func:`start_error`)."""
    port = _free_port()
    log = base / "comfyui.log"
    cmd = [comfy_python(), str(HERE / "launch.py"), str(comfy_dir()), "--cpu", "--listen", "127.0.0.1",
           "--port", str(port), "--base-directory", str(base), "--disable-api-nodes",
           "--preview-method", "none", "--disable-auto-launch"]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(comfy_dir()),
                                start_new_session=True, env=subprocess_env())
    return Client(f"http://127.0.0.1:{port}", base, proc, log)


def start_error(client: Client):
    """Wait until the server answers; None, or why it did not start (with its log). Sets ``start_seconds``."""
    t0 = time.time()
    while not client.alive():
        if client.proc.poll() is not None:
            return f"ComfyUI exited during start-up (code {client.proc.returncode}):\n{tail(client.log)}"
        if time.time() - t0 > START_TIMEOUT:
            return f"ComfyUI did not serve within {START_TIMEOUT}s:\n{tail(client.log)}"
        time.sleep(0.5)
    client.start_seconds = time.time() - t0
    return None


def start_server(base: Path) -> Client:
    """:func:`launch` + wait; a server that does not start is stopped and reported (SystemExit)."""
    client = launch(base)
    why = start_error(client)
    if why:
        stop_server(client)
        raise SystemExit(why)
    return client


def stop_server(client: Client) -> None:
    proc = client.proc
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def unavailable(reason: str):
    """Skip outside CI; fail in CI (``CI=true``), where the real-ComfyUI tests must run."""
    import pytest

    if os.environ.get("CI", "").strip().lower() in ("true", "1"):
        pytest.fail(f"{reason} -- CI=true: the real-ComfyUI tests must run here, not be skipped "
                    f"(.ci/run installs ComfyUI 0.8.0 with ../shared/comfyui/install.sh)", pytrace=False)
    pytest.skip(reason)


def tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def messages(history: dict, kind: str) -> list:
    return [m[1] for m in history.get("status", {}).get("messages", []) if m[0] == kind]
