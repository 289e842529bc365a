"""Opt-in (IMANIM_REAL_SIZE=1): the real-size smoke of bench_real_size.py as a test.

Wan 2.1 T2V 1.3B-shaped random weights (bf16, original layout), the real Wan 2.1 VAE and a real-preset bundle run
through the shipped wan21_1.3b workflow in a real headless ComfyUI (weight_dtype default and fp8_e4m3fn, 128x128,
9 frames, 2 steps), then train stage3 --preset real --dit-training adapter|lora for 2 steps. It takes many minutes
and ~11 GB of RAM on a 2-core CPU, so it is off by default, in CI too:

    IMANIM_REAL_SIZE=1 .venv/bin/python -m pytest -q tests/comfyui/test_real_size.py
"""
import json
import subprocess

from harness import HERE, comfy_python, subprocess_env

# Without IMANIM_REAL_SIZE=1 this file is not collected at all (tests/comfyui/conftest.py: collect_ignore), so
# the default suite has no skipped ComfyUI test: with CI=true a skip in tests/comfyui counts as a failure.


def test_real_size_smoke(comfyui_path, tmp_path):
    out = tmp_path / "real_size.json"
    r = subprocess.run([comfy_python(), str(HERE / "bench_real_size.py"), "--json", str(out)], capture_output=True,
                       text=True, env=subprocess_env(), timeout=3 * 3600, check=False)
    assert out.is_file(), f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads(out.read_text())
    for run in res["runs"]:
        assert run["ok"], run
        assert run["decoded_frames"] == 9 and run["video"]["frames"] == 9 and run["video"]["size"] == [128, 128]
    assert {t["dit_training"] for t in res["training"]["runs"] if t["ok"]} == {"adapter", "lora"}, res["training"]
    assert r.returncode == 0 and res["ok"], r.stdout[-3000:]
