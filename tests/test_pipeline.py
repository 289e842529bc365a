"""The standalone animate pipeline: ComfyUI's euler/simple maths, frame counts, windows, determinism, commands.

Tiny random models (a 1-layer tiny Wan DiT, a small Wan 2.1 VAE, a small bundle) at 64x64, 5-13 frames, 2 steps.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from imanim_core import pipeline as P
from imanim_core.errors import CheckpointError, InputError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_models(seed: int = 0):
    """(bundle, dit, vae): random, small, with a non-zero injector so the motion matters."""
    from imanim_core.backbone import wan
    from imanim_core.config import (BundleConfig, InjectorConfig, JointHeadConfig, MotionDecoderConfig,
                                    RetargeterConfig, TokenizerConfig)
    from imanim_core.models.bundle import IMAnimationBundle

    tok = TokenizerConfig.preset("tiny").replace(width=32, layers=1, heads=2, image_size=32, patch_size=8,
                                                 codebook_size=64)
    cfg = BundleConfig(tokenizer=tok,
                       motion_decoder=MotionDecoderConfig(width=32, layers=1, heads=2, grid=4, joint_dim=16),
                       joint_head=JointHeadConfig(joint_dim=16, hidden=16, upsample=2),
                       retargeter=RetargeterConfig(width=32, layers=1, heads=2, out_dim=16),
                       injector=InjectorConfig(in_dim=16, dit_dim=256, hidden=32))
    bundle = IMAnimationBundle.build(cfg, seed=seed).eval()
    torch.nn.init.normal_(bundle.injector.fc2.weight, std=0.05)
    dc = wan.dit_config("tiny")
    dc.update(num_layers=1, ffn_dim=256)
    torch.manual_seed(seed)
    dit = wan.build_dit(dc).eval()
    vc = wan.vae_config("tiny")
    vc.update(base_dim=8, num_res_blocks=1)
    vae = wan.build_vae(vc).eval()
    return bundle, dit, vae


def save_tiny(folder, models) -> dict:
    from imanim_core.backbone import wan
    from imanim_core.models.bundle import save_bundle

    bundle, dit, vae = models
    paths = {"bundle": folder / "bundle.safetensors", "dit": folder / "dit.safetensors",
             "vae": folder / "vae.safetensors"}
    save_bundle(bundle, paths["bundle"], metadata={"video_size": "64x64"})
    wan.save_dit(dit, paths["dit"])
    wan.save_vae(vae, paths["vae"])
    return paths


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def files(models, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_weights"), models)


def _video(t, h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _identity(c, h=50, w=40, seed=1):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, max(c, 1)), dtype=np.uint8)
    return a[..., 0] if c == 0 else a  # c = 0: a plain [H, W] grey image


KW = dict(size=(64, 64), steps=2, seed=3, progress=False)


# ------------------------------------------------------------------------------------------ sampling maths
def test_simple_schedule_matches_hand_computed_values():
    # shift 3, 4 steps: table[-1], table[-251], table[-501], table[-751] = t 1.0, 0.75, 0.5, 0.25
    s = P.simple_sigmas(4, 3.0)
    expect = [1.0, 3 * .75 / (1 + 2 * .75), 3 * .5 / (1 + 2 * .5), 3 * .25 / (1 + 2 * .25), 0.0]
    assert s.dtype == torch.float32 and s.shape == (5,)
    assert torch.allclose(s, torch.tensor(expect), atol=1e-7)
    assert s.tolist()[1] == pytest.approx(0.9) and s.tolist()[3] == pytest.approx(0.5)
    # shift 1, 3 steps: int(x * 333.33) -> 0, 333, 666 -> t = 1.0, 0.667, 0.334
    assert torch.allclose(P.simple_sigmas(3, 1.0), torch.tensor([1.0, 0.667, 0.334, 0.0]), atol=1e-7)
    tab = P.comfy_sigma_table(5.0)
    assert tab.shape == (1000,) and tab[-1] == 1.0 and torch.all(tab[1:] > tab[:-1])
    with pytest.raises(InputError):
        P.simple_sigmas(0)


def test_euler_matches_a_hand_computed_example():
    noise = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    sig = P.simple_sigmas(4, 3.0)  # [1, .9, .75, .5, 0]
    seen = []

    def half(x, sigma):  # denoised = x / 2 -> x_next = x (1 + (s_next - s) / (2 s))
        seen.append(float(sigma[0]))
        return 0.5 * x

    out = P.euler_sample(half, noise, sig)
    factor = 0.95 * (1 - 0.15 / 1.8) * (1 - 0.25 / 1.5) * 0.5
    assert seen == pytest.approx([1.0, 0.9, 0.75, 0.5])
    assert torch.allclose(out, noise * factor, atol=1e-6)
    # a flow model with constant velocity c lands exactly on noise - c
    c = torch.full_like(noise, 0.3)
    out = P.euler_sample(lambda x, s: x - s.view(-1, 1, 1, 1, 1) * c, noise, sig)
    assert torch.allclose(out, noise - c, atol=1e-6)


def test_noise_is_comfyui_prepare_noise():
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(1234)
        ref = torch.randn((1, 16, 3, 8, 8), dtype=torch.float32, device="cpu")
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(P.comfy_noise((1, 16, 3, 8, 8), 1234), ref)


def test_fit_image_letterbox_geometry():
    img = torch.rand(1, 40, 80, 3)
    out, box = P.fit_image(img, 64, 64, "pad")
    assert out.shape == (1, 64, 64, 3)
    assert (box.top, box.left, box.content_h, box.content_w, box.source_hw) == (16, 0, 32, 64, (40, 80))
    assert torch.equal(out[0, 0], out[0, 16])  # edge rows repeated
    frames = torch.rand(3, 64, 64, 3)
    assert box.restore(frames, "crop").shape == (3, 32, 64, 3)
    assert box.restore(frames, "identity").shape == (3, 40, 80, 3)
    assert box.restore(frames, "grid").shape == (3, 64, 64, 3)
    assert P.parse_size("128x96") == (128, 96) and P.parse_size("64") == (64, 64) and P.parse_size(None) is None
    with pytest.raises(InputError, match="multiple of 16"):
        P.parse_size("100x64")


# ------------------------------------------------------------------------------------------------ animate
@pytest.mark.parametrize("t", [5, 7])
def test_output_has_exactly_t_frames(models, t):
    out = P.animate(_identity(3), _video(t), *models, **KW)
    assert out.dtype == np.uint8 and out.shape[0] == t and out.shape[-1] == 3


@pytest.mark.parametrize("c", [0, 1, 4])
def test_any_identity_channels_and_aspect(models, c):
    ident = _identity(c, h=40, w=70)  # landscape: letterboxed into 64x64, cropped back
    res = P.run(ident, _video(5), *models, **KW)
    box = res.letterbox
    assert res.frames.shape == (5, box.content_h, box.content_w, 3) == (5, 37, 64, 3)
    assert res.grid_frames.shape == (5, 64, 64, 3)
    float_ident = ident.astype(np.float32) / 255.0
    assert P.animate(float_ident, _video(5), *models, output="identity", **KW).shape == (5, 40, 70, 3)


def test_windows_run_for_long_videos_and_match_one_window_when_it_fits(models):
    drv = _video(13)
    res = P.run(_identity(3), drv, *models, window=5, overlap=4, **KW)
    assert res.frames.shape[0] == 13 and len(res.info["windows"]) == 3
    assert [(w.start, w.end) for w in res.info["windows"]] == [(0, 2), (1, 3), (2, 4)]
    one = P.run(_identity(3), drv, *models, window=81, **KW)
    big = P.run(_identity(3), drv, *models, window=13, overlap=4, **KW)
    assert len(one.info["windows"]) == 1 and torch.equal(one.latent, big.latent)
    assert not torch.equal(one.latent, res.latent)
    # no window given: a tiny DiT samples in windows of its training length (9 frames = 3 latent frames, overlap 4)
    auto = P.run(_identity(3), drv, *models, **KW)
    assert [(w.start, w.end) for w in auto.info["windows"]] == [(0, 3), (1, 4)]
    nine = P.run(_identity(3), drv, *models, window=9, overlap=4, **KW)
    assert torch.equal(auto.latent, nine.latent)
    assert P.default_windows(P.dit_width(models[1])) == (9, 4) and P.default_windows(1536) == (81, 16)


def test_seed_determinism(models):
    a = P.run(_identity(3), _video(5), *models, **KW)
    b = P.run(_identity(3), _video(5), *models, **KW)
    c = P.run(_identity(3), _video(5), *models, **{**KW, "seed": 4})
    assert torch.equal(a.latent, b.latent) and np.array_equal(a.frames, b.frames)
    assert not torch.equal(a.latent, c.latent)


def test_fixed_seed_equals_a_direct_call_of_the_same_steps(models):
    """Rebuild the sampling by hand from the definitions (ComfyUI noise, simple sigmas, euler, denoised =
    x - sigma v with flow.denoise_once) and compare with the pipeline."""
    from imanim_core.backbone import flow, wan
    from imanim_core.windows import pad_frames

    bundle, dit, vae = models
    ident, drv = _identity(3, 64, 64), _video(7)
    res = P.run(ident, drv, *models, size=(64, 64), steps=2, seed=11, shift=3.0, progress=False)
    with torch.no_grad():
        img = torch.from_numpy(ident).float().div(255.0)[None]
        ref = wan.vae_encode(vae, img.permute(0, 3, 1, 2)[:, :, None] * 2 - 1)
        _, codes = bundle.tokenizer.encode_frames(drv)
        tokens = pad_frames(bundle.retargeter(ref, codes[None]), dim=1)  # 7 -> 9 frames
        g = torch.Generator().manual_seed(11)
        x = torch.randn((1, 16, 3, 8, 8), generator=g)
        tab = [3.0 * (i / 1000) / (1 + 2.0 * (i / 1000)) for i in range(1, 1001)]
        sig = [tab[-1], tab[-(1 + 500)], 0.0]
        x = sig[0] * x
        ctx = flow.zero_context(1)
        for i in range(2):
            v = flow.denoise_once(dit, x, sig[i], ctx, ref, motion=tokens, injector=bundle.injector)
            den = x - sig[i] * v
            x = x + (x - den) / sig[i] * (sig[i + 1] - sig[i])
    assert torch.allclose(res.latent, x, atol=1e-5, rtol=0)
    assert res.info["sigmas"] == pytest.approx(sig, abs=1e-7)
    assert not isinstance(dit.patch_embedding, type(bundle.injector)) and type(dit.patch_embedding).__name__ == \
        "Conv3d"  # the injector is detached again


def test_text_context_and_cfg(models):
    ctx = torch.randn(1, 3, 4096, generator=torch.Generator().manual_seed(0))
    a = P.run(_identity(3), _video(5), *models, context=ctx, **KW)
    b = P.run(_identity(3), _video(5), *models, context=ctx, guidance=3.0, **KW)
    assert a.info["dit_calls"] == 2 and b.info["dit_calls"] == 4 and b.info["cfg"]
    assert not torch.equal(a.latent, b.latent)


def test_interrupt_propagates_and_restores_the_dit(models):
    dit = models[1]

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        P.run(_identity(3), _video(5), *models, size=(64, 64), steps=2, progress=stop)
    assert type(dit.patch_embedding).__name__ == "Conv3d"


def test_bad_inputs_give_clear_errors(models):
    bundle, dit, vae = models
    with pytest.raises(InputError, match="multiple of 16"):
        P.animate(_identity(3), _video(5), *models, size=(60, 64), steps=1, progress=False)
    with pytest.raises(InputError, match="identity"):
        P.animate(np.zeros((0, 5, 3), np.uint8), _video(5), *models, **KW)
    from imanim_core.models.bundle import IMAnimationBundle

    tok_only = IMAnimationBundle(config=bundle.config.replace(retargeter=None, injector=None),
                                 tokenizer=bundle.tokenizer)
    with pytest.raises(CheckpointError, match="retargeter"):
        P.animate(_identity(3), _video(5), tok_only, dit, vae, **KW)


# ------------------------------------------------------------------------------------------------ commands
def test_missing_embedded_weights_name_the_files_and_the_command(monkeypatch, tmp_path):
    import imanim_core.weights as Wt

    monkeypatch.setattr(Wt, "DIT_FILE", tmp_path / "diffusion_models" / "imanim_tiny_dit.safetensors")
    monkeypatch.setattr(Wt, "VAE_FILE", tmp_path / "vae" / "imanim_tiny_vae.safetensors")
    monkeypatch.setattr(Wt, "BUNDLE_FILE", tmp_path / "im_animation" / "imanim_tiny.safetensors")
    with pytest.raises(CheckpointError) as e:
        Wt.embedded_paths()
    msg = str(e.value)
    assert "imanim_tiny_dit.safetensors" in msg and "imanim_tiny_vae.safetensors" in msg
    assert "imanim_tiny.safetensors" in msg and "python -m imanim_core train" in msg
    with pytest.raises(CheckpointError, match="imanim_tiny_vae.safetensors"):
        P.load_models()
    from imanim_core.cli import main

    assert main(["demo", "--out", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d" / "result.mp4").exists()


def test_animate_and_demo_commands(files, tmp_path, capsys):
    import cv2

    from imanim_core.cli import main
    from imanim_core.io.video import read_video, write_video

    rgba = np.random.default_rng(0).integers(0, 256, (70, 50, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "id.png"), rgba)
    write_video(tmp_path / "drv.mp4", _video(7, 40, 56), fps=12)
    w = ["--bundle", str(files["bundle"]), "--dit", str(files["dit"]), "--vae", str(files["vae"])]
    rc = main(["animate", "--identity", str(tmp_path / "id.png"), "--driving", str(tmp_path / "drv.mp4"),
               "--out", str(tmp_path / "out.mp4"), "--steps", "2", "--threads", "1"] + w)
    assert rc == 0
    frames, fps = read_video(tmp_path / "out.mp4")
    assert frames.shape[0] == 7 and fps == pytest.approx(12) and frames.shape[1] == 64  # portrait: 64 x 46
    rc = main(["demo", "--out", str(tmp_path / "demo"), "--seconds", "0.625", "--fps", "8", "--steps", "2",
               "--scale", "1"] + w)
    assert rc == 0
    out = capsys.readouterr().out
    assert "wall time" in out and "peak memory" in out
    res, _ = read_video(tmp_path / "demo" / "result.mp4")
    sbs, _ = read_video(tmp_path / "demo" / "side_by_side.mp4")
    assert res.shape[0] == 5 and sbs.shape[0] == 5 and sbs.shape[2] == 4 * res.shape[2]
    import cv2

    strip = cv2.imread(str(tmp_path / "demo" / "strip.png"))  # 4 moments x (identity | driving | result | gt)
    assert strip.shape[0] == 4 * sbs.shape[1] and strip.shape[1] == sbs.shape[2]
