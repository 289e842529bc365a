"""The pack's root __init__.py imports cleanly without ComfyUI (runs everywhere, no server)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

CODE = f"""
import importlib.util, sys
try:
    import comfy_api  # noqa: F401
    print("SKIP: comfy_api importable"); sys.exit(0)
except ImportError:
    pass
spec = importlib.util.spec_from_file_location("pack", r"{REPO / '__init__.py'}", submodule_search_locations=[r"{REPO}"])
m = importlib.util.module_from_spec(spec); sys.modules["pack"] = m; spec.loader.exec_module(m)
assert not hasattr(m, "comfy_entrypoint"), "comfy_entrypoint defined without ComfyUI"
assert m.WEB_DIRECTORY is None
assert "torch" not in sys.modules, "importing the pack without ComfyUI should stay light"
print("OK")
"""


def test_pack_imports_without_comfyui():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() in ("OK", "SKIP: comfy_api importable"), r.stdout
