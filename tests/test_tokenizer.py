"""MotionTokenizer (tiny config for speed; 'large' checked on the meta device) and preprocess_frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imanim_core.config import TokenizerConfig
from imanim_core.errors import InputError
from imanim_core.models.tokenizer import (MotionTokenizer, StopRequested, auto_dtype, encoder_flops_per_frame,
                                          preprocess_frames)

# tiny models only: single-threaded (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = TokenizerConfig.preset("tiny")  # the conv encoder of the embedded model
TINY_VIT = TokenizerConfig.preset("tiny-vit")  # the released (ViT) structure at a tiny size


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return MotionTokenizer(TINY).eval()


def test_shapes_tiny(tiny):
    out = tiny.encode(torch.rand(3, 3, 64, 64))
    assert out["indices"].shape == (3, 32) and out["indices"].dtype == torch.int64
    assert out["codes"].shape == (3, 32, 12) and out["codes"].dtype == torch.float32
    assert out["z"].shape == (3, 32, 12)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert int(out["indices"].max()) < TINY.codebook_size


def test_shapes_large_on_meta():
    cfg = TokenizerConfig.preset("large")
    assert cfg.grid_hw == (16, 16)
    with torch.device("meta"):
        m = MotionTokenizer(cfg)
        out = m.encode(torch.empty(2, 3, 256, 256))
    assert out["indices"].shape == (2, 32) and out["codes"].shape == (2, 32, 12)
    assert m.encoder.positional_embedding.shape == (257, 1024)
    assert m.encoder.patch_embed.padding == (4, 2)
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(303.5e6, rel=0.01)


def test_codes_are_normalised_codebook_rows(tiny):
    out = tiny.encode(torch.rand(2, 3, 64, 64))
    codes = out["codes"]
    torch.testing.assert_close(codes.norm(dim=-1), torch.ones(2, 32), atol=1e-5, rtol=0)
    rows = F.normalize(tiny.quantize.embedding.weight.float(), dim=-1)[out["indices"]]
    torch.testing.assert_close(codes, rows, atol=1e-6, rtol=0)
    torch.testing.assert_close(tiny.lookup(out["indices"]), rows)
    # nearest: no other code is closer to the normalised z
    zn = F.normalize(out["z"], dim=-1)
    d_all = torch.cdist(zn.reshape(-1, 12), F.normalize(tiny.quantize.embedding.weight, dim=-1))
    d_sel = (zn - rows).norm(dim=-1).reshape(-1)
    assert torch.all(d_sel <= d_all.min(dim=1).values + 1e-5)


def test_lookup_rejects_bad_indices(tiny):
    with pytest.raises(InputError, match=r"\[0, 1023\]"):
        tiny.lookup(torch.tensor([[0, 1024]]))
    with pytest.raises(InputError, match="integer"):
        tiny.lookup(torch.tensor([0.5]))


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(1)
    m = MotionTokenizer(TINY_VIT).train()
    out = m.encode(torch.rand(2, 3, 64, 64))
    target = torch.randn_like(out["codes"])
    ((out["codes"] - target) ** 2).mean().backward()
    for name in ("encoder.patch_embed.weight", "encoder.transformer.0.attn.in_proj_weight",
                 "encoder.conv_out.weight", "latent_tokens"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    assert m.quantize.embedding.weight.grad is None or m.quantize.embedding.weight.grad.abs().sum() == 0
    # the VQ loss trains the codebook (and commits the encoder)
    m.zero_grad()
    m.encode(torch.rand(2, 3, 64, 64))["loss"].backward()
    assert m.quantize.embedding.weight.grad.abs().sum() > 0
    assert m.encoder.conv_out.weight.grad.abs().sum() > 0


def test_deterministic_for_a_seed():
    torch.manual_seed(123)
    a = MotionTokenizer(TINY).eval()
    torch.manual_seed(123)
    b = MotionTokenizer(TINY).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ra, rb = a.encode(x), b.encode(x)
    assert torch.equal(ra["indices"], rb["indices"]) and torch.equal(ra["codes"], rb["codes"])


def test_init_is_sensible():
    torch.manual_seed(0)
    m = MotionTokenizer(TINY_VIT)
    assert abs(float(m.encoder.transformer[0].mlp.c_fc.weight.detach().std()) - 0.02) < 0.005
    assert abs(float(m.latent_tokens.detach().std()) - TINY_VIT.width ** -0.5) < 0.03
    assert float(m.encoder.transformer[0].mlp.c_fc.bias.detach().abs().max()) == 0.0
    assert torch.equal(m.encoder.ln_pre.weight, torch.ones(TINY_VIT.width))


def test_legacy_output_is_a_reshape():
    """legacy_output=True feeds conv_out the raw memory of [B,K,W] read as [B,W,K,1]."""
    torch.manual_seed(0)
    cfg = TINY_VIT.replace(legacy_output=True)
    m = MotionTokenizer(cfg).eval()
    captured = {}
    m.encoder.ln_post.register_forward_hook(lambda mod, i, o: captured.__setitem__("lat", o))
    with torch.no_grad():
        z = m.encode(torch.rand(1, 3, 64, 64))["z"]
        lat = captured["lat"]  # [1,K,W]
        W, K = cfg.width, cfg.num_latent_tokens
        flat = lat.reshape(-1)
        grid = torch.stack([flat[w * K:(w + 1) * K] for w in range(W)])  # [W,K]
        expect = m.encoder.conv_out.weight[:, :, 0, 0] @ grid + m.encoder.conv_out.bias[:, None]  # [d,K]
        torch.testing.assert_close(z[0], expect.T, atol=1e-5, rtol=1e-5)
        m.encoder.cfg = cfg.replace(legacy_output=False)
        z2 = m.encode(torch.rand(1, 3, 64, 64))["z"]
        lat2 = captured["lat"]
        expect2 = lat2[0] @ m.encoder.conv_out.weight[:, :, 0, 0].T + m.encoder.conv_out.bias
        torch.testing.assert_close(z2[0], expect2, atol=1e-5, rtol=1e-5)


def test_encode_frames_batches_progress_and_stop(tiny):
    frames = (np.random.default_rng(0).random((7, 40, 50, 3)) * 255).astype(np.uint8)
    calls = []
    idx, codes = tiny.encode_frames(frames, batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert idx.shape == (7, 32) and codes.shape == (7, 32, 12)
    assert calls == [(3, 7), (6, 7), (7, 7)]
    with torch.no_grad():
        one = tiny.encode(preprocess_frames(frames, 64))
    assert torch.equal(idx, one["indices"])
    # preprocessed input is detected; a float IMAGE tensor gives the same tokens as uint8
    idx2, _ = tiny.encode_frames(preprocess_frames(frames, 64), batch_size=4)
    assert torch.equal(idx2, idx)
    idx3, _ = tiny.encode_frames(torch.from_numpy(frames).float() / 255.0, batch_size=7)
    assert (idx3 == idx).float().mean() > 0.95
    n = {"c": 0}

    def stop():
        n["c"] += 1
        return n["c"] > 2

    with pytest.raises(StopRequested) as e:
        tiny.encode_frames(frames, batch_size=2, should_stop=stop)
    assert e.value.done == 4 and e.value.total == 7
    with pytest.raises(InputError, match="no frames"):
        tiny.encode_frames(np.zeros((0, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="batch_size"):
        tiny.encode_frames(frames, batch_size=0)


def test_encode_rejects_wrong_pixels(tiny):
    with pytest.raises(InputError, match=r"expected \[B,3,64,64\].*got shape \(1, 3, 32, 32\)"):
        tiny.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(InputError, match="float"):
        tiny.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_preprocess_pads_portrait_and_landscape():
    # landscape 4 (H) x 8 (W): 2 black rows on top and bottom after padding to 8x8
    land = np.full((1, 4, 8, 3), 255, np.uint8)
    out = preprocess_frames(land, 8)
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.float32
    assert torch.all(out[0, :, :2] == 0) and torch.all(out[0, :, 6:] == 0) and torch.all(out[0, :, 2:6] == 1.0)
    # ... then resized x2 to 16: black band rows 0-2 and 13-15, white rows 5-10 (the edges blend)
    out = preprocess_frames(land, 16)
    assert out.shape == (1, 3, 16, 16)
    assert torch.all(out[0, :, :3] == 0) and torch.all(out[0, :, 13:] == 0) and torch.all(out[0, :, 5:11] == 1.0)
    # portrait 8 (H) x 4 (W), float tensor in ComfyUI layout: 2 black columns left and right
    port = torch.ones(2, 8, 4, 3) * 0.5
    port[1, :, :, 1] = 0.25
    out = preprocess_frames(port, 8)
    assert out.shape == (2, 3, 8, 8)
    assert torch.all(out[:, :, :, :2] == 0) and torch.all(out[:, :, :, 6:] == 0)
    assert torch.allclose(out[0, :, :, 2:6], torch.tensor(0.5))
    assert torch.allclose(out[1, 1, :, 2:6], torch.tensor(0.25)) and torch.allclose(out[1, 0, :, 2:6], torch.tensor(0.5))
    # odd padding: 3 rows into 6 -> 1 on top, 2 at the bottom; channel order kept (R stays R)
    img = np.zeros((1, 3, 6, 3), np.uint8)
    img[..., 0] = 255
    out = preprocess_frames(img, 6)
    assert torch.all(out[0, 0, 0] == 0) and torch.all(out[0, 0, 1:4] == 1) and torch.all(out[0, 0, 4:] == 0)
    assert torch.all(out[0, 1:] == 0)


def test_preprocess_leaves_input_untouched():
    x = torch.rand(2, 16, 16, 3) * 1.5  # out of range on purpose; already square and at size
    before = x.clone()
    out = preprocess_frames(x, 16)
    assert torch.equal(x, before) and float(out.max()) <= 1.0


def test_preprocess_antialiased_downscale():
    # a 1-px checkerboard shrunk 8x must average to grey, not alias to black/white
    y, x = np.mgrid[:128, :128]
    board = (((x + y) % 2) * 255).astype(np.uint8)
    frames = np.repeat(board[None, :, :, None], 3, axis=3)
    out = preprocess_frames(frames, 16)
    assert torch.allclose(out, torch.tensor(0.5), atol=0.02)


def test_preprocess_bad_inputs():
    with pytest.raises(InputError, match=r"\(2, 8, 8, 4\) has 4 channel.*Convert to RGB"):
        preprocess_frames(np.zeros((2, 8, 8, 4), np.uint8), 16)
    with pytest.raises(InputError, match=r"1 channel.*Convert to RGB"):
        preprocess_frames(torch.zeros(1, 8, 8, 1), 16)
    with pytest.raises(InputError, match="no frames"):
        preprocess_frames(np.zeros((0, 8, 8, 3), np.uint8), 16)
    with pytest.raises(InputError, match=r"\[T,H,W,3\]"):
        preprocess_frames(np.zeros((8, 8), np.uint8), 16)
    with pytest.raises(InputError, match="numpy array or a torch tensor"):
        preprocess_frames([[1, 2, 3]], 16)


def test_flops_and_auto_dtype():
    f = encoder_flops_per_frame(TokenizerConfig.preset("large"))
    # 24 layers x 289 tokens x 1024 wide: ~183 GFLOP per frame, dominated by the MLP and the projections
    assert f["total"] == pytest.approx(183.2e9, rel=0.01)
    assert f["mlp"] > f["attention"] > f["patch_embed"] > f["conv_out"]
    dt, why = auto_dtype("cpu", width=128)
    assert dt in (torch.float32, torch.bfloat16) and why


def test_conv_encoder_tokens_and_anchor_logits():
    """The tiny conv encoder: K tokens of d channels, K attention maps at the input size (the first J are the
    stage-1 anchors), and gradients through the straight-through codes to every encoder part."""
    torch.manual_seed(0)
    m = MotionTokenizer(TINY).train()
    assert m.latent_tokens is None
    out = m.encode(torch.rand(2, 3, 64, 64))
    assert out["codes"].shape == (2, TINY.num_latent_tokens, TINY.token_dim)
    assert out["attn_logits"].shape == (2, TINY.num_latent_tokens, 64, 64)
    (out["codes"] ** 2 * torch.randn_like(out["codes"])).sum().backward()
    for name in ("encoder.features.0.weight", "encoder.attn.weight", "encoder.value.weight", "encoder.proj.weight"):
        g = dict(m.named_parameters())[name].grad
        assert g is not None and g.abs().sum() > 0, name
    # the attention pool reads positions: a shifted image moves the tokens
    img = torch.zeros(1, 3, 64, 64)
    img[..., 10:20, 10:20] = 1.0
    a = m.encode(img)["z"]
    b = m.encode(torch.roll(img, shifts=(30, 30), dims=(2, 3)))["z"]
    assert (a - b).abs().max() > 1e-3
