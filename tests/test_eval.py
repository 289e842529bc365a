"""The benchmark: metrics on known inputs, the fixed held-out case set, the skeleton baseline, eval --quick."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from imanim_core import evaluation as E


# tiny models only: single-threaded (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ metrics
def test_identical_frames_score_perfectly():
    a = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.all(E.psnr_frames(a, a) == E.PSNR_CAP)
    assert np.allclose(E.ssim_frames(a, a), 1.0, atol=1e-6)
    boxes = np.array([[4, 20, 5, 30]] * 3)
    assert np.all(E.psnr_frames(a, a, boxes) == E.PSNR_CAP)
    assert np.allclose(E.ssim_frames(a, a, boxes), 1.0, atol=1e-6)
    m = np.zeros((3, 32, 32), bool)
    m[:, 5:15, 5:15] = True
    assert np.all(E.mask_iou(m, m) == 1.0)


def test_known_values():
    a = torch.zeros(2, 16, 16, 3)
    b = torch.full((2, 16, 16, 3), 0.1)
    assert np.allclose(E.psnr_frames(a, b), 20.0, atol=1e-4)  # MSE 0.01
    assert np.all(E.ssim_frames(b, b * 0 + 0.9) < 1)
    # two 10x10 squares shifted by 5 px: intersection 50, union 150
    m1 = np.zeros((1, 32, 32), bool)
    m2 = np.zeros((1, 32, 32), bool)
    m1[0, 5:15, 5:15] = True
    m2[0, 5:15, 10:20] = True
    assert E.mask_iou(m1, m2)[0] == pytest.approx(1 / 3)
    assert E.mask_iou(m1, ~m1)[0] == 0.0
    assert E.mask_boxes(m1, margin=2).tolist() == [[3, 17, 3, 17]]
    h = E.colour_histogram(np.array([[255, 0, 0]] * 5, np.uint8))
    g = E.colour_histogram(np.array([[0, 0, 255]] * 5, np.uint8))
    assert E.hellinger(h, h) == pytest.approx(0.0, abs=1e-7) and E.hellinger(h, g) == pytest.approx(1.0)
    # leakage coefficient: result = driver -> 1, result = identity/ground truth -> 0, halfway -> 0.5
    g0, d0 = np.array([[1.0, 2.0]]), np.array([[2.0, 0.0]])
    assert E.leak_terms(d0, g0, d0) == (5.0, 5.0)
    assert E.leak_terms(g0, g0, d0)[0] == 0.0
    num, den = E.leak_terms((g0 + d0) / 2, g0, d0)
    assert num / den == pytest.approx(0.5)


def test_subpixel_peaks_and_bones():
    from imanim_core.data.heatmaps import render_heatmaps

    kp = torch.tensor([[[5.3, 7.6], [12.0, 3.2]]])
    hm = render_heatmaps(kp, None, (16, 16), sigma=1.0)
    xy = E._subpixel_peaks(hm)
    assert torch.allclose(xy, kp, atol=0.25)
    # the reader's geometry inverts stage 1's targets (heatmaps in the centred, zero-padded square)
    from imanim_core.train.data import square_keypoints

    kp = torch.tensor([[[10.0, 40.0], [90.3, 20.7], [60.0, 59.0]]])  # pixels of a 64 x 96 (H x W) frame
    sq, side = square_keypoints(kp, 64, 96)
    hm = render_heatmaps(sq, None, (64, 64), sigma=1.5, image_size=(side, side))
    back = E.square_to_frame(E._subpixel_peaks(hm).numpy(), 64, (64, 96))
    assert np.abs(back - kp.numpy()).max() < 0.6
    k = np.zeros((20, 2))
    k[2], k[3] = (0, 0), (3, 4)
    assert E.bone_lengths(k)[0] == pytest.approx(5.0)


# --------------------------------------------------------------------------------------------- benchmark
def test_benchmark_cases_are_fixed_held_out_and_levelled():
    from imanim_core.data.puppet import PuppetIdentity

    a, b = E.benchmark_cases(2), E.benchmark_cases(2)
    assert a == b and [c.level for c in a] == ["small"] * 2 + ["medium"] * 2 + ["large"] * 2
    for c in a:
        lo, hi = E.LEVELS[c.level]
        assert lo <= c.mismatch < hi and c.identity_seed >= E.EVAL_SEED_BASE > E.TRAIN_SEED_LIMIT
        assert c.mismatch == pytest.approx(E.body_mismatch(PuppetIdentity.sample(c.identity_seed),
                                                           PuppetIdentity.sample(c.driver_seed)), abs=1e-6)
    check = E.training_seed_overlap(a, items=2000)
    assert check["disjoint"] and check["items_checked"] == 2000
    rc = E.render_case(a[-1], (64, 64), 5, 8.0)
    assert rc["gt"].shape == rc["driving"].shape == (5, 64, 64, 3) and rc["identity"].shape == (64, 64, 3)
    # the ground truth is the identity's body: its background, the driver's motion
    assert np.array_equal(rc["gt"][0][~rc["gt_masks"][0]][:3], rc["background"][~rc["gt_masks"][0]][:3])
    assert E.mask_iou(E.silhouette(rc["gt"], rc["background"]), rc["gt_masks"]).mean() > 0.8
    m = E.case_metrics(rc["gt"], rc)
    assert m["psnr"] == E.PSNR_CAP and m["iou"] == 1.0 and m["leak_height"] in (0.0, None)


# --------------------------------------------------------------------------------------- baseline + eval
def test_skeleton_baseline_trains_plugs_in_and_eval_quick_writes_its_files(tmp_path):
    """One training step of the skeleton baseline (stage-3 recipe, tiny sizes), then eval --quick on random tiny
    weights passed in, with that baseline."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_tp_helpers", Path(__file__).with_name("test_pipeline.py"))
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    save_tiny, tiny_models = helpers.save_tiny, helpers.tiny_models

    from imanim_core.baselines import load_skeleton_baseline, skeleton_baseline_status, skeleton_frames
    from imanim_core.cli import main
    from imanim_core.train.config import resolve_config
    from imanim_core.train.loop import run_training
    from imanim_core.train.skeleton import SkeletonStage

    assert skeleton_baseline_status(tmp_path / "none").startswith("not trained")
    sk = skeleton_frames(np.random.default_rng(0).uniform(0, 30, (3, 20, 2)), (32, 48), source_hw=(32, 32))
    assert sk.shape == (3, 32, 48, 3) and sk.max() > 0

    run = tmp_path / "skel"
    cfg = resolve_config("stage3", overrides=dict(out=str(run), vae="random", max_steps=1, batch_size=1,
                                                  num_frames=5, height=32, width=32, log_every=1))
    assert run_training(cfg, SkeletonStage) == 0
    base = load_skeleton_baseline(run / "export")
    tok = base.tokens(np.random.default_rng(1).uniform(0, 60, (5, 20, 2)), (64, 64))
    assert tok.shape == (1, 5, 4, 4, 64)

    files = save_tiny(tmp_path, tiny_models())
    out = tmp_path / "eval"
    rc = main(["eval", "--out", str(out), "--quick", "--no-progress", "--bundle", str(files["bundle"]),
               "--dit", str(files["dit"]), "--vae", str(files["vae"]), "--skeleton", str(run / "export")])
    assert rc == 0
    for name in ("metrics.json", "metrics.md", "metrics.png", "leakage.png", "examples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    rep = json.loads((out / "metrics.json").read_text())
    assert rep["benchmark"]["quick"] and rep["benchmark"]["size"] == [64, 64]
    assert rep["heldout_check"]["disjoint"]
    res = rep["results"]
    assert set(res) == {"im_animation", "skeleton", "identity_still", "vae_upper_bound", "ground_truth"}
    for m in ("im_animation", "skeleton", "identity_still"):
        assert set(E.LEVELS) <= set(res[m]) and res[m]["status"].startswith("ok")
        assert all(math.isfinite(res[m]["all"][k]) for k in ("psnr", "ssim", "iou", "kp_err", "colour_leak"))
    assert res["ground_truth"]["all"]["psnr"] == E.PSNR_CAP and res["ground_truth"]["all"]["iou"] == 1.0
    assert len(rep["per_case"]) == 3 * 5
    md = (out / "metrics.md").read_text()
    assert "| im_animation |" in md and "large mismatch" in md


def test_baseline_command_in_the_main_cli_and_its_older_spelling(tmp_path, capsys):
    """`python -m imanim_core baseline install|train` (commands/baseline.py) and `python -m imanim_core.baselines`,
    which runs the same command: one error line and exit code 2 for a folder that is not a baseline export."""
    import subprocess
    import sys
    from pathlib import Path

    from imanim_core.cli import main

    assert main(["baseline", "install", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: install: ") and "is not a skeleton-baseline export folder" in err
    with pytest.raises(SystemExit) as e:  # a sub-command is required
        main(["baseline"])
    assert e.value.code == 2
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "imanim_core.baselines", "install", str(tmp_path / "none")],
                       cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: install: ")
