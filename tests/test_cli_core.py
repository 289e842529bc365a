"""CLI: encode-motion (end to end, as a subprocess, on the released layout), inspect, bench."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imanim_core.cli import main
from imanim_core.config import BundleConfig, TokenizerConfig
from imanim_core.io.video import write_video
from imanim_core.models.bundle import IMAnimationBundle, load_motion_tokens, save_bundle, save_motion_tokens

REPO = Path(__file__).resolve().parents[1]


def clip(path, T=9):
    f = np.zeros((T, 40, 56, 3), np.uint8)
    for t in range(T):
        f[t, 8:24, 2 + 4 * t:18 + 4 * t] = (220, 180, 40)
    return write_video(path, f, fps=12)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    b = IMAnimationBundle.build(BundleConfig(tokenizer=TokenizerConfig.preset("tiny")), seed=0)
    return save_bundle(b, tmp_path_factory.mktemp("tiny") / "tiny_bundle.safetensors")


def test_encode_motion_released_layout_subprocess(tmp_path, released_file):
    video = clip(tmp_path / "drive.mp4", T=5)
    out = tmp_path / "tokens.safetensors"
    r = subprocess.run([sys.executable, "-m", "imanim_core", "encode-motion", "--checkpoint", str(released_file),
                        "--driving", str(video), "--out", str(out), "--dtype", "bf16", "--batch-size", "5"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    t = load_motion_tokens(out)
    assert t["indices"].shape == (5, 32) and t["codes"].shape == (5, 32, 12)
    assert t["config"] == TokenizerConfig.preset("large") and t["fps"] == pytest.approx(12.0)
    assert t["metadata"]["dtype"] == "bfloat16" and t["metadata"]["source"] == "drive.mp4"
    assert int(t["indices"].max()) < 4096
    torch.testing.assert_close(t["codes"].norm(dim=-1), torch.ones(5, 32), atol=1e-5, rtol=0)
    assert "released tokenizer" in r.stderr and "wrote" in r.stdout
    assert not out.with_name(out.name + ".partial").exists()


def test_encode_motion_auto_dtype_and_resume(tmp_path, tiny_bundle, capsys, monkeypatch, one_thread):
    video = clip(tmp_path / "d.mp4", T=7)
    out = tmp_path / "t.safetensors"
    assert main(["encode-motion", "--checkpoint", str(tiny_bundle), "--driving", str(video), "--out", str(out),
                 "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "dtype auto -> " in err and ("faster" in err or "fp32" in err)
    full = load_motion_tokens(out)
    assert full["indices"].shape == (7, 32)
    dtype = full["metadata"]["dtype"]

    # Ctrl-C during the second chunk (chunks of 4 x batch 1 = 4 frames): the first chunk is kept, and the same
    # command resumes from it and gives the same tokens
    from imanim_core.models.tokenizer import MotionTokenizer

    real = MotionTokenizer.encode_frames
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    dt_flag = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    cmd = ["encode-motion", "--checkpoint", str(tiny_bundle), "--driving", str(video), "--out", str(out),
           "--dtype", dt_flag, "--batch-size", "1"]
    out.unlink()
    monkeypatch.setattr(MotionTokenizer, "encode_frames", flaky)
    assert main(cmd) == 130
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.exists()
    assert "interrupted: 4 of 7 frames kept" in capsys.readouterr().err
    monkeypatch.setattr(MotionTokenizer, "encode_frames", real)
    assert main(cmd) == 0
    assert "resuming: 4 of 7 frames" in capsys.readouterr().err
    again = load_motion_tokens(out)
    assert torch.equal(again["indices"], full["indices"]) and not partial.exists()
    # --fresh ignores a partial result; a partial from another dtype is ignored too
    save_motion_tokens(partial, {k: full[k][:2] if k in ("indices", "codes") else full[k]
                                 for k in ("indices", "codes", "config", "fps")}, metadata={"resume_dtype": "x"})
    assert main(cmd) == 0
    assert "ignoring" in capsys.readouterr().err
    assert torch.equal(load_motion_tokens(out)["indices"], full["indices"])


def test_encode_motion_errors(tmp_path, tiny_bundle, capsys, one_thread):
    out = tmp_path / "t.safetensors"
    assert main(["encode-motion", "--checkpoint", str(tiny_bundle), "--driving", str(tmp_path / "none.mp4"),
                 "--out", str(out)]) == 2
    assert "none.mp4" in capsys.readouterr().err
    txt = tmp_path / "ckpt.safetensors"
    txt.write_text("text")
    assert main(["encode-motion", "--checkpoint", str(txt), "--driving", str(tmp_path / "none.mp4"),
                 "--out", str(out)]) == 2
    assert "not a safetensors file" in capsys.readouterr().err
    assert not out.exists()


def test_inspect_kinds(tmp_path, tiny_bundle, released_file, capsys, one_thread):
    assert main(["inspect", str(tiny_bundle)]) == 0
    text = capsys.readouterr().out
    assert "IM-Animation bundle" in text and "part tokenizer" in text and "format_version 1" in text

    assert main(["inspect", str(released_file)]) == 0
    assert "released IM-Animation motion encoder" in capsys.readouterr().out

    from safetensors.torch import save_file

    unk = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(4, 4)}, str(unk))
    assert main(["inspect", str(unk), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "unknown" and info["num_params"] == 16

    bad = tmp_path / "broken.safetensors"
    bad.write_text("not weights")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "broken.safetensors" in err and "not a safetensors file" in err
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_wan(tmp_path, capsys):
    pytest.importorskip("imanim_core.backbone.wan")
    from safetensors.torch import save_file

    dit = tmp_path / "dit.safetensors"
    save_file({k: torch.zeros(2) for k in ("head.modulation", "patch_embedding.weight",
                                           "blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight")}, str(dit))
    assert main(["inspect", str(dit)]) == 0
    assert "Wan DiT (original key layout)" in capsys.readouterr().out
    vae = tmp_path / "vae.safetensors"
    save_file({k: torch.zeros(2) for k in ("encoder.conv1.weight", "decoder.middle.0.residual.0.gamma",
                                           "conv2.weight")}, str(vae))
    assert main(["inspect", str(vae), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "wan_vae"


def test_bench_tiny_json(capsys):
    from imanim_core.precision import cpu_bf16_speedup

    # the bf16 encoder rows only where bf16 is native: emulated (AVX2-only CPUs) they alone took ~100 s of this test
    dtypes = {"fp32", "bf16"} if cpu_bf16_speedup("matmul") >= 1.0 else {"fp32"}
    assert main(["bench", "encoder", "--presets", "tiny", "--frames", "1", "--matmul-size", "512", "--dtypes",
                 ",".join(sorted(dtypes)), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["matmul_gflop_per_s"]["bf16"] > 0
    rows = {r["dtype"]: r for r in res["results"]}
    assert set(rows) == dtypes
    for r in rows.values():
        assert r["preset"] == "tiny" and r["frames_per_s"] > 0 and r["frames"] >= 16
        assert r["gflop_per_s"] == pytest.approx(r["gflop_per_frame"] * r["frames_per_s"])
        # sanity: not far above this CPU's matmul peak (the faster dtype's: bf16 is emulated, and slow, on a CPU
        # without native bf16, where fp32 frames can run at several times the bf16 matmul rate)
        peak = max(res["matmul_gflop_per_s"].values())
        assert r["fraction_of_bf16_matmul"] > 0 and r["gflop_per_s"] / peak < 5
