"""Retargeter: shapes, frame/batch structure, chunking, errors, cost formula."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from imanim_core.config import JointHeadConfig, RetargeterConfig
from imanim_core.errors import InputError
from imanim_core.models.motion_decoder import JointHead
from imanim_core.models.retargeter import Retargeter

torch.set_num_threads(1)

CFG = RetargeterConfig(latent_channels=16, patch_size=2, token_dim=12, num_motion_tokens=4, width=32, layers=2,
                       heads=2, out_dim=8)


def _model(seed=0):
    torch.manual_seed(seed)
    return Retargeter(CFG).eval()


def _inputs(b=1, t=5, h=8, w=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 16, 1, h, w, generator=g), torch.randn(b, t, 4, 12, generator=g)


def _disable_temporal(m):
    """Zero the residual branches of the temporal blocks: they become the identity map."""
    for tb in m.temporal_blocks:
        for lin in (tb.attn.out_proj, tb.mlp.c_proj):
            torch.nn.init.zeros_(lin.weight)
            torch.nn.init.zeros_(lin.bias)


@pytest.mark.parametrize("t,h,w", [(1, 8, 8), (5, 8, 8), (5, 8, 12), (3, 6, 14), (9, 4, 2)])
def test_shapes(t, h, w):
    m = _model()
    lat, codes = _inputs(2, t, h, w)
    with torch.no_grad():
        out = m(lat, codes)
    assert out.shape == (2, t, h // 2, w // 2, 8)
    assert torch.isfinite(out).all()


def test_4d_identity_and_joint_head():
    m = _model()
    lat, codes = _inputs(1, 5, 8, 12)
    with torch.no_grad():
        a, b = m(lat, codes), m(lat[:, :, 0], codes)
    assert torch.equal(a, b)
    head = JointHead(JointHeadConfig(joint_dim=8, num_joints=20, hidden=8, upsample=4))
    assert head(a).shape == (1, 5, 20, 16, 24)


def test_frame_chunk_gives_same_result():
    m = _model()
    lat, codes = _inputs(2, 5, 8, 12)
    with torch.no_grad():
        ref = m(lat, codes)
        for c in (1, 2, 5, 64):
            torch.testing.assert_close(m(lat, codes, frame_chunk=c), ref, rtol=1e-5, atol=1e-5)
        m.frame_chunk = 3
        torch.testing.assert_close(m(lat, codes), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="frame_chunk"):
        m(lat, codes, frame_chunk=0)


def test_frame_t_depends_on_codes_t_without_temporal():
    """With the temporal blocks switched off, each frame's output depends only on its own codes."""
    m = _model()
    _disable_temporal(m)
    lat, codes = _inputs(1, 5, 8, 12)
    codes2 = codes.clone()
    codes2[:, 2] = torch.randn(1, 4, 12)
    with torch.no_grad():
        a, b = m(lat, codes), m(lat, codes2)
    for t in (0, 1, 3, 4):
        torch.testing.assert_close(a[:, t], b[:, t], rtol=0, atol=1e-6)
    assert (a[:, 2] - b[:, 2]).abs().max() > 1e-3
    # frame permutation -> output permutation (no temporal mixing, sin-cos time only used in temporal blocks)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        c = m(lat, codes[:, perm])
    torch.testing.assert_close(c, a[:, perm], rtol=1e-5, atol=1e-5)


def test_temporal_attention_mixes_frames_deterministically():
    m = _model()
    lat, codes = _inputs(1, 5, 8, 12)
    codes2 = codes.clone()
    codes2[:, 2] = torch.randn(1, 4, 12)
    with torch.no_grad():
        a, a2, b = m(lat, codes), m(lat, codes), m(lat, codes2)
    assert torch.equal(a, a2)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-5  # frame 0 sees frame 2 through temporal attention
    assert (a[:, 2] - b[:, 2]).abs().max() > (a[:, 0] - b[:, 0]).abs().max()  # the direct path dominates


def test_identity_and_batch_structure():
    m = _model()
    lat, codes = _inputs(2, 5, 8, 12)
    with torch.no_grad():
        both = m(lat, codes)
        first = m(lat[:1], codes[:1])
        lat2 = lat.clone()
        lat2[1] += 1.0
        other = m(lat2, codes)
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)  # samples do not mix
    assert torch.equal(other[0], both[0])
    assert ((other[1] - both[1]).flatten(1).abs().amax(dim=1) > 1e-3).all()  # identity reaches every frame


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = Retargeter(CFG)
    lat, codes = _inputs(1, 5, 8, 8)
    m(lat, codes, frame_chunk=2).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("lat_shape,codes_shape,match", [
    ((1, 16, 1, 8, 11), (1, 5, 4, 12), "multiples of the patch size"),
    ((1, 16, 1, 7, 8), (1, 5, 4, 12), "multiples of the patch size"),
    ((1, 16, 2, 8, 8), (1, 5, 4, 12), "one latent frame"),
    ((1, 15, 1, 8, 8), (1, 5, 4, 12), "16 channels"),
    ((1, 16, 8, 8, 8, 1), (1, 5, 4, 12), "identity latent"),
    ((1, 16, 1, 8, 8), (1, 5, 5, 12), "K=4"),
    ((1, 16, 1, 8, 8), (1, 5, 4, 11), "d=12"),
    ((1, 16, 1, 8, 8), (5, 4, 12), "motion codes"),
    ((1, 16, 1, 8, 8), (1, 0, 4, 12), "at least one frame"),
    ((2, 16, 1, 8, 8), (1, 5, 4, 12), "batch sizes differ"),
])
def test_input_errors(lat_shape, codes_shape, match):
    with pytest.raises(InputError, match=match):
        _model()(torch.zeros(lat_shape), torch.zeros(codes_shape))


def test_cost_formula_matches_flop_counter():
    m = _model()
    lat, codes = _inputs(2, 5, 8, 12)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
        m(lat, codes)
    cost = Retargeter.cost(CFG, 8, 12, 5, batch=2)
    assert fc.get_total_flops() == cost["total_flops"]


def test_default_cost_numbers_in_docstring():
    c = Retargeter.cost(RetargeterConfig(), 60, 104, 81)
    assert c["positions"] == 1560
    assert c["attention_flops"] == pytest.approx(1.72e12, rel=0.01)
    assert c["linear_flops"] == pytest.approx(1.62e12, rel=0.01)
    assert c["total_flops"] == pytest.approx(3.34e12, rel=0.01)
    assert Retargeter.cost(RetargeterConfig(), 60, 104, 81, frame_chunk=8)["attention_matrix_bytes"] < 0.7e9


# ------------------------------------------------------------------------------------------- driver-pose path
DRV = CFG.replace(driver_layers=1, driver_width=16, driver_heads=2, driver_grid=8)


def test_square_to_grid_area_resamples_and_reads_the_letterboxed_band():
    from imanim_core.models.retargeter import square_to_grid

    x = torch.randn(3, 8, 8, 5)
    # square output: 8 -> 4 is exactly 2x2 average pooling
    want = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(square_to_grid(x, 4, 4), want)
    # landscape 4x8 output: the frame fills the square's middle half in height (rows 2..5), all 8 columns
    band = torch.zeros(1, 8, 8, 1)
    band[:, 2:6] = 1.0
    torch.testing.assert_close(square_to_grid(band, 4, 8), torch.ones(1, 4, 8, 1))
    # portrait: the middle half in width
    torch.testing.assert_close(square_to_grid(band.transpose(1, 2), 8, 4), torch.ones(1, 8, 4, 1))


def test_driver_path_starts_as_the_driver_pose_and_follows_the_codes():
    from imanim_core.models.retargeter import square_to_grid

    torch.manual_seed(0)
    m = Retargeter(DRV).eval()
    assert float(m.proj_out.weight.abs().sum()) == 0.0
    lat, codes = _inputs(2, 3, 8, 12)
    with torch.no_grad():
        out = m(lat, codes)
        drv = m.driver(codes.reshape(6, 4, 12))
        torch.testing.assert_close(out, square_to_grid(drv, 4, 6).reshape(2, 3, 4, 6, 8))
        # a different driver gives a different output; the same codes in another frame order move with them
        out2 = m(lat, codes.flip(1))
    assert (out2 - out).abs().max() > 1e-2
    torch.testing.assert_close(out2, out.flip(1))


def test_driver_path_is_off_by_default_and_in_the_state_dict_when_on():
    assert Retargeter(CFG).driver is None and CFG.driver_layers == 0
    keys = Retargeter(DRV).state_dict().keys()
    assert any(k.startswith("driver.") for k in keys) and "driver_proj.weight" in keys


# ------------------------------------------------------------------------------------------- code standardisation
def test_code_norm_standardises_the_codes_and_is_saved():
    from imanim_core.config import BundleConfig
    from imanim_core.models.bundle import IMAnimationBundle, load_bundle, save_bundle

    torch.manual_seed(0)
    assert not CFG.code_norm and "code_mean" not in Retargeter(CFG).state_dict()  # old layout unchanged
    with pytest.raises(InputError, match="without code_norm"):
        Retargeter(CFG).set_code_stats(torch.randn(5, 4, 12))
    norm, plain = Retargeter(CFG.replace(code_norm=True)).eval(), Retargeter(CFG).eval()
    plain.load_state_dict({k: v for k, v in norm.state_dict().items() if not k.startswith("code_")})
    lat, codes = _inputs(2, 3, 8, 12)
    data = 0.3 + 0.01 * torch.randn(40, 4, 12)  # codes that barely move around an offset, like the tiny tokenizer's
    norm.set_code_stats(data)
    torch.testing.assert_close(norm.code_std, data.std(0))
    with torch.no_grad():
        torch.testing.assert_close(norm(lat, codes), plain(lat, (codes - data.mean(0)) / data.std(0)))
    # the statistics travel with the bundle
    b = IMAnimationBundle(config=BundleConfig(retargeter=norm.cfg), retargeter=norm)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        back = load_bundle(save_bundle(b, f"{d}/b.safetensors")).retargeter
    torch.testing.assert_close(back.code_mean, norm.code_mean)
    torch.testing.assert_close(back.code_std, norm.code_std)
