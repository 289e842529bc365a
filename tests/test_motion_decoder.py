"""MotionDecoder (stage-1 decoder) and the shared JointHead."""
import time

import pytest
import torch

from imanim_core.config import JointHeadConfig, MotionDecoderConfig
from imanim_core.data.heatmaps import heatmap_argmax, render_heatmaps
from imanim_core.errors import InputError
from imanim_core.models.motion_decoder import JointHead, MotionDecoder, heatmap_loss

torch.set_num_threads(1)

DEC = MotionDecoderConfig(token_dim=12, num_tokens=8, width=32, layers=2, heads=2, grid=4, joint_dim=16)
HEAD = JointHeadConfig(joint_dim=16, num_joints=5, hidden=16, upsample=4)


def test_decoder_shapes_and_config_roundtrip():
    torch.manual_seed(0)
    dec = MotionDecoder(DEC)
    out = dec(torch.randn(3, 8, 12))
    assert out.shape == (3, 4, 4, 16)
    assert torch.isfinite(out).all()
    assert MotionDecoderConfig.from_dict(DEC.to_dict()) == DEC
    assert MotionDecoderConfig().num_tokens == 32


@pytest.mark.parametrize("shape", [(3, 8), (2, 7, 12), (2, 8, 11)])
def test_decoder_bad_codes(shape):
    with pytest.raises(InputError, match="motion codes"):
        MotionDecoder(DEC)(torch.randn(*shape))


@pytest.mark.parametrize("lead,gh,gw", [((), 4, 4), ((2,), 3, 5), ((2, 3), 4, 6), ((1,), 1, 1)])
def test_joint_head_any_grid(lead, gh, gw):
    head = JointHead(HEAD)
    hm = head(torch.randn(*lead, gh, gw, 16))
    assert hm.shape == (*lead, 5, gh * 4, gw * 4)


@pytest.mark.parametrize("up", [1, 2, 3, 6])
def test_joint_head_upsample_factors(up):
    head = JointHead(HEAD.replace(upsample=up))
    assert head(torch.randn(2, 3, 5, 16)).shape == (2, 5, 3 * up, 5 * up)


def test_joint_head_bad_channels():
    with pytest.raises(InputError, match="joint tokens"):
        JointHead(HEAD)(torch.randn(2, 4, 4, 15))


def test_decoder_gradient_flows():
    torch.manual_seed(0)
    dec, head = MotionDecoder(DEC), JointHead(HEAD)
    codes = torch.randn(2, 8, 12, requires_grad=True)
    hm = head(dec(codes))
    target = torch.rand_like(hm)
    heatmap_loss(hm, target).backward()
    assert codes.grad is not None and codes.grad.abs().sum() > 0
    for name, p in list(dec.named_parameters()) + list(head.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_heatmap_loss_weight():
    pred, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    assert heatmap_loss(pred, target).item() == pytest.approx(1.0)
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    assert heatmap_loss(pred, target, w).item() == pytest.approx(0.5)
    with pytest.raises(InputError):
        heatmap_loss(pred, target[..., :3])
    with pytest.raises(InputError):
        heatmap_loss(pred, target, w[:, :2])


def test_overfit_heatmaps_one_batch():
    """Real learning check: decoder + head fit render_heatmaps targets of one tiny batch (each sample its own
    pose, so the joint tokens must depend on the codes), and the peaks land on the keypoints."""
    torch.manual_seed(0)
    t0 = time.time()
    dec, head = MotionDecoder(DEC), JointHead(HEAD)
    b, j, size = 4, 5, 16
    codes = torch.nn.functional.normalize(torch.randn(b, 8, 12), dim=-1)
    kp = torch.rand(b, j, 2) * (size - 5) + 2.5
    vis = torch.ones(b, j)
    vis[0, 1] = 0  # an invisible joint: all-zero target
    target = render_heatmaps(kp, vis, (size, size), sigma=1.5)
    opt = torch.optim.Adam(list(dec.parameters()) + list(head.parameters()), lr=3e-3)
    losses = []
    for _ in range(150):  # ~3 ms a step; sparse heatmap MSE has a slow start (the "predict the mean" plateau)
        loss = heatmap_loss(head(dec(codes)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[29] < losses[0]
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    with torch.no_grad():
        pred = head(dec(codes))
    xy, _ = heatmap_argmax(pred)
    err = (xy - kp).norm(dim=-1)[vis > 0]
    assert err.max() < 1.5, err
    assert pred[0, 1].abs().max() < 0.3  # the invisible joint stays (near) empty
    assert time.time() - t0 < 10
