"""CI rule: the real-ComfyUI tests are never skipped in CI (``CI=true``, set by ``.ci/run``); outside CI a missing
ComfyUI skips them with the reason."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_node_tests(tmp_path, ci: str | None):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["COMFYUI_PATH"] = str(tmp_path / "no-comfyui-here")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                           "tests/comfyui/test_nodes.py", "-k", "test_object_info_lists_nodes_with_tooltips"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_comfyui_fails_in_ci(tmp_path, ci):
    r = _run_node_tests(tmp_path, ci)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "CI=true: the real-ComfyUI tests must run" in out and "no ComfyUI checkout" in out, out


def test_missing_comfyui_skips_outside_ci(tmp_path):
    r = _run_node_tests(tmp_path, None)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "1 skipped" in out, out
