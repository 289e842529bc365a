"""MotionInjector / InjectedPatchEmbedding / attach_to: zero-init, VAE-like frame grouping, reference frame, CFG."""
import pytest
import torch
import torch.nn as nn

from imanim_core.config import InjectorConfig
from imanim_core.errors import InputError
from imanim_core.models.injector import (InjectedPatchEmbedding, MotionInjector, apply_injection, attach_to,
                                         detach, group_frames)

torch.set_num_threads(1)

DIT = 32
CFG = InjectorConfig(in_dim=8, dit_dim=DIT, hidden=16, temporal_stride=4)


def _conv(seed=0):
    torch.manual_seed(seed)
    return nn.Conv3d(16, DIT, kernel_size=(1, 2, 2), stride=(1, 2, 2))


def _perturb(inj, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        inj.fc2.weight.copy_(torch.randn(inj.fc2.weight.shape, generator=g) * 0.1)
        inj.fc2.bias.copy_(torch.randn(inj.fc2.bias.shape, generator=g) * 0.1)
    return inj


def _tokens(b=1, t=9, gh=3, gw=5, seed=1):
    return torch.randn(b, t, gh, gw, 8, generator=torch.Generator().manual_seed(seed))


def test_group_frames_like_the_wan_vae():
    t = torch.arange(9.0).view(1, 9, 1, 1, 1).expand(1, 9, 2, 3, 1)
    g = group_frames(t, 4)
    assert g.shape == (1, 3, 2, 3, 4)
    assert g[0, :, 0, 0].tolist() == [[0, 0, 0, 0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert group_frames(t[:, :1], 4)[0, :, 1, 2].tolist() == [[0, 0, 0, 0]]


def test_injector_shape_zero_init_and_frame_count_error():
    inj = MotionInjector(CFG)
    out = inj(_tokens(2, 9))
    assert out.shape == (2, DIT, 3, 3, 5)
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(inj.fc2.weight, torch.zeros_like(inj.fc2.weight))
    assert MotionInjector(CFG)(_tokens(1, 1)).shape == (1, DIT, 1, 3, 5)
    for t in (2, 4, 6, 8):
        with pytest.raises(InputError, match="4n\\+1"):
            inj(_tokens(1, t))
    with pytest.raises(InputError, match="Dr=8"):
        inj(torch.zeros(1, 5, 3, 5, 7))


@pytest.mark.parametrize("frame,latent", [(0, 0), (1, 1), (4, 1), (5, 2), (8, 2)])
def test_grouping_only_the_right_latent_frame_changes(frame, latent):
    inj = _perturb(MotionInjector(CFG))
    base = torch.zeros(1, 9, 3, 5, 8)
    hit = base.clone()
    hit[:, frame] = 1.0
    with torch.no_grad():
        d = (inj(hit) - inj(base)).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
    assert d[latent] > 1e-4
    assert all(d[i] == 0 for i in range(3) if i != latent), d


def test_zero_injector_changes_nothing_and_reference_frame_untouched():
    conv = _conv()
    pe = InjectedPatchEmbedding(conv, MotionInjector(CFG))
    x = torch.randn(2, 16, 4, 6, 10)  # 3 latent frames + 1 reference frame
    pe.set_motion(_tokens(2, 9))
    with torch.no_grad():
        ref = conv(x)
        assert torch.equal(pe(x), ref)
        _perturb(pe.injector)
        y = pe(x)
    for f in range(3):
        assert (y[:, :, f] - ref[:, :, f]).abs().max() > 1e-4
    assert torch.equal(y[:, :, 3], ref[:, :, 3])  # appended reference latent: no motion
    pe.set_motion(None)
    with torch.no_grad():
        assert torch.equal(pe(x), ref)


def test_weight_bias_and_attributes_are_the_convs():
    conv = _conv()
    pe = InjectedPatchEmbedding(conv, MotionInjector(CFG))
    assert pe.weight is conv.weight and pe.bias is conv.bias
    assert pe.kernel_size == (1, 2, 2) and pe.out_channels == DIT
    new = nn.Parameter(torch.zeros_like(conv.weight))
    pe.weight = new  # a host replacing patch_embedding.weight (e.g. a weight patch) reaches the conv
    assert conv.weight is new and pe.weight is new
    assert not hasattr(pe, "comfy_cast_weights")
    assert "weight" not in dict(pe.named_parameters(recurse=False))


def test_cfg_batch_repeat_and_dtype_cast():
    conv = _conv().double()
    pe = InjectedPatchEmbedding(conv, _perturb(MotionInjector(CFG)))
    tok = _tokens(1, 5)
    pe.set_motion(tok)
    x1 = torch.randn(1, 16, 2, 6, 10, dtype=torch.float64)
    with torch.no_grad():
        y1 = pe(x1)
        y2 = pe(torch.cat([x1, x1]))  # cond + uncond
    assert y2.dtype == torch.float64
    torch.testing.assert_close(y2[0], y1[0])
    torch.testing.assert_close(y2[1], y1[0])
    pe.set_motion(_tokens(2, 5))
    with pytest.raises(InputError, match="multiple of the motion batch"):
        pe(torch.randn(3, 16, 2, 6, 10, dtype=torch.float64))


def test_errors_grid_and_frames():
    pe = InjectedPatchEmbedding(_conv(), MotionInjector(CFG))
    pe.set_motion(_tokens(1, 5, gh=3, gw=5))
    with pytest.raises(InputError, match="3x5.*4x5"):
        pe(torch.randn(1, 16, 2, 8, 10))
    pe.set_motion(_tokens(1, 9))  # 3 latent frames
    with pytest.raises(InputError, match="only 2"):
        pe(torch.randn(1, 16, 2, 6, 10))
    with pytest.raises(InputError, match="4n\\+1"):
        pe.set_motion(_tokens(1, 6))
    with pytest.raises(InputError, match="Dr=8"):
        pe.set_motion(torch.zeros(1, 5, 3, 5, 4))
    with pytest.raises(InputError, match="DiT width"):
        apply_injection(torch.zeros(1, 8, 2, 3, 5), torch.zeros(1, DIT, 2, 3, 5))


def test_gradient_reaches_injector_and_tokens():
    pe = InjectedPatchEmbedding(_conv(), MotionInjector(CFG))
    tok = _tokens(1, 5).requires_grad_(True)
    pe.set_motion(tok)
    pe(torch.randn(1, 16, 3, 6, 10)).square().sum().backward()
    assert pe.injector.fc2.weight.grad.abs().sum() > 0  # zero layer gets a gradient, so it can learn
    assert pe.injector.fc1.weight.grad is None or pe.injector.fc1.weight.grad.abs().sum() == 0  # fc2 is zero


def test_attach_detach_plain_module():
    host = nn.Module()
    host.patch_embedding = conv = _conv()
    inj = MotionInjector(CFG)
    w = attach_to(host, inj)
    assert host.patch_embedding is w and w.conv is conv and w.injector is inj
    inj2 = MotionInjector(CFG)
    w2 = attach_to(host, inj2)  # re-attach swaps the injector, never wraps twice
    assert w2.conv is conv and w2.injector is inj2
    assert detach(host) is w2 and host.patch_embedding is conv
    assert detach(host) is None
    with pytest.raises(InputError, match="patch_embedding"):
        attach_to(nn.Linear(2, 2), inj)


def _wan_transformer_class():
    """diffusers' WanTransformer3DModel. Environment workaround: a torchvision wheel whose compiled ops do not
    match the installed torch ("operator torchvision::nms does not exist") breaks diffusers' import chain
    (diffusers -> peft -> transformers -> torchvision). diffusers' Wan DiT does not need torchvision, so when
    (and only when) torchvision fails to import it is hidden before diffusers/transformers are imported."""
    import sys

    if "transformers" not in sys.modules and sys.modules.get("torchvision", 0) is not None:
        try:
            import torchvision  # noqa: F401
        except Exception:  # noqa: BLE001 - a broken binary raises RuntimeError, not ImportError
            for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                del sys.modules[k]
            sys.modules["torchvision"] = None  # find_spec -> None: transformers treats it as not installed
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel


def test_attach_to_diffusers_wan_transformer():
    WanTransformer3DModel = _wan_transformer_class()
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
                                  in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64,
                                  num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads").eval()
    keys = set(model.state_dict())
    latent = torch.randn(1, 16, 2, 6, 10)  # T'=2 latent frames (T=5), DiT grid 3x5
    reference = torch.randn(1, 16, 1, 6, 10)
    t = torch.tensor([500])
    text = torch.randn(1, 7, 32)

    def run(x):
        with torch.no_grad():
            return model(x, t, text, return_dict=False)[0]

    x_ref = torch.cat([latent, reference], dim=2)  # reference frame appended in time
    base, base_ref = run(latent), run(x_ref)
    inj = MotionInjector(CFG)
    wrapper = attach_to(model, inj)
    assert model.patch_embedding.weight is wrapper.conv.weight
    wrapper.set_motion(_tokens(1, 5))
    assert torch.equal(run(latent), base)
    assert torch.equal(run(x_ref), base_ref)
    _perturb(inj)
    moved, moved_ref = run(latent), run(x_ref)
    assert (moved - base).abs().max() > 1e-4
    assert (moved_ref - base_ref).abs().max() > 1e-4
    assert moved_ref.shape == base_ref.shape == (1, 16, 3, 6, 10)
    # classifier-free guidance batch: one motion serves cond and uncond
    with torch.no_grad():
        out2 = model(torch.cat([x_ref, x_ref]), t.repeat(2), text.repeat(2, 1, 1), return_dict=False)[0]
    torch.testing.assert_close(out2[1], moved_ref[0], rtol=1e-4, atol=1e-5)
    detach(model)
    assert set(model.state_dict()) == keys
    assert torch.equal(run(x_ref), base_ref)
