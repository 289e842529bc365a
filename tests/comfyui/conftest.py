"""A real ComfyUI, headless, for the node tests.

- ComfyUI is found at ``$COMFYUI_PATH`` or ``~/comfy/ComfyUI`` (>= 0.8); otherwise every test here is skipped
  with the reason, except when ``CI=true`` (``.ci/run`` sets it): then a missing or too old ComfyUI is a failure,
  so CI can never pass without running them. Its Python is ``$COMFYUI_PYTHON``, else the repo's ``.venv-comfyui`` (scripts/setup.sh --dev),
  else this interpreter.
- ONE server per session: ``launch.py`` runs ComfyUI's ``main.py --cpu`` on a free localhost port with
  ``--base-directory`` pointing at a temp dir whose ``custom_nodes/`` holds a symlink to this repo, so the
  ComfyUI checkout is never modified. The temp ``models/`` gets random tiny weights (``make_models.py``). The
  server is always terminated at the end; its log is printed when it fails to start.
- The server and helper processes run torch on one thread unless OMP_NUM_THREADS is set: the tiny models are
  fastest that way, and on a shared CPU more threads spin-wait against other jobs (10x slower steps were seen).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (HERE, MIN_VERSION, REPO, _version, comfy_dir, comfy_python, launch,  # noqa: E402
                     start_error, stop_server, subprocess_env, unavailable)


# opt-in files, not collected by default (a skip here would fail CI, see the module docstring)
collect_ignore = [] if os.environ.get("IMANIM_REAL_SIZE", "") == "1" else ["test_real_size.py"]


@pytest.fixture(scope="session")
def comfyui_path() -> Path:
    d = comfy_dir()
    if not (d / "main.py").is_file():
        unavailable(f"tests/comfyui: no ComfyUI checkout at {d} (set COMFYUI_PATH to a ComfyUI >= 0.8 checkout)")
    v = _version(d)
    if v is None or v < MIN_VERSION:
        unavailable(f"tests/comfyui: ComfyUI at {d} is version {v}, these tests need >= 0.8.0")
    return d


@pytest.fixture(scope="session")
def base_dir(comfyui_path, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("comfyui_base")
    (base / "custom_nodes").mkdir()
    os.symlink(REPO, base / "custom_nodes" / "comfyui-im-animation", target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def model_files(base_dir, comfyui_path) -> dict:
    """Random tiny weights written into the server's models folder (see make_models.py)."""
    r = subprocess.run([comfy_python(), str(HERE / "make_models.py"), str(base_dir / "models"), str(comfyui_path)],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, f"make_models.py failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def server(comfyui_path, base_dir, model_files):
    client = launch(base_dir)  # harness.launch: comfy_dir() is comfyui_path
    try:
        why = start_error(client)
        if why:
            pytest.fail(why)
        yield client
    finally:
        stop_server(client)
