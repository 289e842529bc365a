"""Flow matching with a clean reference frame appended in time, the motion injector, and sampling (tiny DiT, CPU)."""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import pytest
import torch

from imanim_core.backbone import flow, wan
from imanim_core.errors import InputError

B, T, H, W = 2, 2, 8, 8  # latent batch, latent frames T', latent grid (DiT grid 4x4)
SCHEDULERS = ("flow_unipc", "euler")


# ------------------------------------------------------------------------ oracle: diffusers' flow schedulers
# An independent sampler (diffusers' UniPC / Euler flow schedulers around flow.dit_forward), kept here as a reference
# for the flow conventions; the project's one sampler is imanim_core.pipeline.sample_latents.
def make_scheduler(name: str = "flow_unipc", shift: float = flow.DEFAULT_SHIFT):
    """A diffusers flow scheduler: ``'flow_unipc'`` (UniPC, flow prediction, as diffusers' Wan pipeline) or
    ``'euler'`` (FlowMatchEulerDiscreteScheduler)."""
    if shift <= 0:
        raise InputError(f"shift: expected a positive number, got {shift}")
    if name == "flow_unipc":
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(num_train_timesteps=flow.NUM_TRAIN_TIMESTEPS,
                                       prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=float(shift), solver_order=2)
    if name == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=flow.NUM_TRAIN_TIMESTEPS, shift=float(shift))
    raise InputError(f"scheduler: unknown {name!r}; choose one of {list(SCHEDULERS)}")


def _set_timesteps(sched, name: str, steps: int, device) -> None:
    if name == "euler":
        # sigmas 1 .. 1/steps, shifted once by the scheduler (its default grid would shift the end point twice)
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(), device=device)
    else:
        sched.set_timesteps(steps, device=device)


@torch.no_grad()
def sample(dit, noise: Union[torch.Tensor, tuple], context: torch.Tensor, reference: Optional[torch.Tensor] = None,
           steps: int = 20, shift: float = flow.DEFAULT_SHIFT, scheduler: str = "flow_unipc", guidance: float = 1.0,
           negative_context: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
           progress: Optional[Callable[[int, int], None]] = None, motion=None, injector=None) -> torch.Tensor:
    """Sample clean normalised latents ``[B, 16, T', h, w]`` starting from ``noise`` (a tensor, or a shape
    tuple drawn with ``generator``).

    The reference frame is appended (clean) at every step and never part of the result. ``guidance`` != 1 runs
    the DiT a second time with ``negative_context`` (default :func:`zero_context`), motion and reference applied
    to both passes (as the ComfyUI patch does). ``progress(step, steps)`` is called after every step; it may
    raise to stop. The DiT's timestep is ``1000 * sigma`` of the scheduler's sigma at each step.
    """
    if isinstance(noise, (tuple, list, torch.Size)):
        gen_device = generator.device if generator is not None else "cpu"
        noise = torch.randn(tuple(noise), generator=generator, device=gen_device, dtype=torch.float32)
    flow._check_latent(dit, noise, "noise")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: expected a positive integer, got {steps!r}")
    b = noise.shape[0]
    device = next(dit.parameters()).device
    x = noise.to(device=device, dtype=torch.float32)
    context = flow._prep_context(dit, context, b).to(device)
    reference = flow._prep_reference(reference, x)
    reference = None if reference is None else reference.to(device)
    cfg = float(guidance) != 1.0
    if cfg:
        if negative_context is None:
            negative_context = flow.zero_context(b, context.shape[1], context.shape[2], device=device)
        negative_context = flow._prep_context(dit, negative_context, b, "negative_context").to(device)
    sched = make_scheduler(scheduler, shift)
    _set_timesteps(sched, scheduler, steps, device)
    n = len(sched.timesteps)
    with flow.motion_attached(dit, motion, injector):
        for i, t in enumerate(sched.timesteps):
            ts = flow.sigma_to_timestep(sched.sigmas[i].to(device=device, dtype=torch.float32)).expand(b)
            v = flow.dit_forward(dit, x, ts, context, reference).float()
            if cfg:
                v_neg = flow.dit_forward(dit, x, ts, negative_context, reference).float()
                v = v_neg + float(guidance) * (v - v_neg)
            kwargs = {"generator": generator} if scheduler == "euler" else {}
            x = sched.step(v, t, x, return_dict=False, **kwargs)[0]
            if progress is not None:
                progress(i + 1, n)
    return x


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast and does not collapse when the shared CPU is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return wan.build_dit("tiny").eval()


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, 16, T, H, W, generator=g)
    ref = torch.randn(B, 16, 1, H, W, generator=g)
    return x0, ref, flow.zero_context(B)


def test_shift_and_sigma_sampling():
    assert flow.shift_sigma(0.0, 5.0) == 0.0 and flow.shift_sigma(1.0, 5.0) == 1.0
    assert flow.shift_sigma(0.5, 5.0) == pytest.approx(5 * 0.5 / (1 + 4 * 0.5))
    assert flow.shift_sigma(0.3, 1.0) == pytest.approx(0.3)
    s = flow.sample_sigmas(4096, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4096,) and s.min() >= 0 and s.max() < 1 and s.mean() > 0.6  # shifted to high noise
    assert flow.sigma_to_timestep(torch.tensor(0.25)) == 250
    x0, n = torch.ones(1, 2), torch.zeros(1, 2)
    assert torch.equal(flow.add_noise(x0, n, torch.tensor([0.25])), torch.full((1, 2), 0.75))
    assert torch.equal(flow.flow_target(x0, n), -x0)
    assert flow.zero_context(3).shape == (3, 1, 4096) and flow.zero_context(1, 7).shape == (1, 7, 4096)


def test_denoise_once_is_the_raw_prediction_on_the_first_frames(dit, batch):
    x0, ref, ctx = batch
    sigma = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        v = flow.denoise_once(dit, x0, sigma, ctx, ref)
        full = dit(hidden_states=torch.cat([x0, ref], 2), timestep=1000 * sigma, encoder_hidden_states=ctx,
                   return_dict=False)[0]
        v_noref = flow.denoise_once(dit, x0, 0.3, ctx[:1])  # scalar sigma, context batch 1 broadcast
    assert v.shape == x0.shape and torch.equal(v, full[:, :, :T])
    assert v_noref.shape == x0.shape
    assert not torch.allclose(v_noref[0], v[0])  # the reference frame is seen by the other frames


def test_loss_matches_denoise_once_and_ignores_the_reference_output(dit, batch):
    x0, ref, ctx = batch
    g = torch.Generator().manual_seed(2)
    loss, d = flow.flow_matching_loss(dit, x0, ctx, ref, generator=g, return_details=True)
    assert torch.isfinite(loss) and loss.ndim == 0
    s = d["sigma"].view(-1, 1, 1, 1, 1)
    assert torch.allclose(d["x_t"], (1 - s) * x0 + s * d["noise"])
    with torch.no_grad():
        v = flow.denoise_once(dit, d["x_t"], d["sigma"], ctx, ref)
    assert torch.allclose(loss, ((v - (d["noise"] - x0)) ** 2).mean(), atol=1e-6)

    captured = {}

    def hook(_mod, _inp, out):
        out[0].retain_grad()
        captured["out"] = out[0]

    h = dit.register_forward_hook(hook)
    try:
        flow.flow_matching_loss(dit, x0, ctx, ref, sigma=d["sigma"], noise=d["noise"]).backward()
    finally:
        h.remove()
        dit.zero_grad(set_to_none=True)
    grad = captured["out"].grad
    assert captured["out"].shape[2] == T + 1  # the DiT ran on T' + 1 frames
    assert grad[:, :, T:].abs().max() == 0  # no gradient from the reference frame's output
    assert grad[:, :, :T].abs().max() > 0


def test_weighted_loss_is_the_weighted_mean_of_the_squared_error(dit, batch):
    """``weight``: uniform = the plain mean; a zero weight takes a region out of the loss; otherwise
    sum(w * se) / sum(w) over the elements (the per-channel broadcast of a [B, 1, T', h, w] map)."""
    x0, ref, ctx = batch
    g = torch.Generator().manual_seed(3)
    plain, d = flow.flow_matching_loss(dit, x0, ctx, ref, generator=g, return_details=True)
    same = dict(sigma=d["sigma"], noise=d["noise"])
    with torch.no_grad():
        se = (d["pred"].float() - d["target"].float()) ** 2
        w = torch.ones(x0.shape[0], 1, *x0.shape[2:])
        uniform = flow.flow_matching_loss(dit, x0, ctx, ref, weight=3.0 * w, **same)
        assert torch.allclose(uniform, plain, rtol=1e-5)
        w[..., : x0.shape[-1] // 2] = 0.0  # left half out
        half = flow.flow_matching_loss(dit, x0, ctx, ref, weight=w, **same)
        assert torch.allclose(half, se[..., x0.shape[-1] // 2:].mean(), rtol=1e-5)
        w = 1.0 + 4.0 * torch.rand(x0.shape[0], 1, *x0.shape[2:], generator=g)
        got = flow.flow_matching_loss(dit, x0, ctx, ref, weight=w, **same)
        we = w.expand(se.shape)
        assert torch.allclose(got, (we * se).sum() / we.sum(), rtol=1e-5)
        assert not torch.allclose(got, plain, rtol=1e-4)


def test_loss_goes_down_on_a_fixed_tiny_batch(batch):
    x0, ref, ctx = batch
    torch.manual_seed(0)
    model = wan.build_dit("tiny").train()
    g = torch.Generator().manual_seed(3)
    sigma = torch.tensor([0.4, 0.7])
    noise = torch.randn(x0.shape, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = flow.flow_matching_loss(model, x0, ctx, ref, sigma=sigma, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses))
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses


def test_motion_goes_through_the_injector(dit, batch):
    from imanim_core.config import InjectorConfig
    from imanim_core.models.injector import InjectedPatchEmbedding, MotionInjector

    x0, ref, ctx = batch
    torch.manual_seed(4)
    inj = MotionInjector(InjectorConfig(in_dim=8, dit_dim=256, hidden=16))
    motion = torch.randn(B, 4 * (T - 1) + 1, H // 2, W // 2, 8)
    sigma, noise = torch.tensor([0.5, 0.5]), torch.randn(x0.shape)
    base = flow.flow_matching_loss(dit, x0, ctx, ref, sigma=sigma, noise=noise)
    with_motion = flow.flow_matching_loss(dit, x0, ctx, ref, motion=motion, injector=inj, sigma=sigma, noise=noise)
    assert torch.allclose(base, with_motion)  # zero-initialised injector output changes nothing
    with_motion.backward()
    assert inj.fc2.weight.grad is not None and inj.fc2.weight.grad.abs().max() > 0  # the injector trains
    assert isinstance(dit.patch_embedding, torch.nn.Conv3d)  # detached again
    dit.zero_grad(set_to_none=True)

    with torch.no_grad():
        torch.nn.init.normal_(inj.fc2.weight, std=0.1)
        moved = flow.denoise_once(dit, x0, sigma, ctx, ref, motion=motion, injector=inj)
        plain = flow.denoise_once(dit, x0, sigma, ctx, ref)
    assert not torch.allclose(moved, plain)

    from imanim_core.models.injector import attach_to, detach

    attach_to(dit, inj)
    try:
        with torch.no_grad():
            again = flow.denoise_once(dit, x0, sigma, ctx, ref, motion=motion)  # injector already attached
        assert torch.allclose(again, moved)
        assert isinstance(dit.patch_embedding, InjectedPatchEmbedding) and dit.patch_embedding.motion is None
    finally:
        detach(dit)
    with pytest.raises(InputError, match="no injector"):
        flow.denoise_once(dit, x0, sigma, ctx, ref, motion=motion)


@pytest.mark.parametrize("scheduler", ["flow_unipc", "euler"])
def test_sample_returns_the_video_frames_only(dit, batch, scheduler):
    _, ref, ctx = batch
    calls = []
    out = sample(dit, (B, 16, T, H, W), ctx, ref, steps=3, shift=3.0, scheduler=scheduler,
                      generator=torch.Generator().manual_seed(5), progress=lambda i, n: calls.append((i, n)))
    assert out.shape == (B, 16, T, H, W) and torch.isfinite(out).all()
    assert calls == [(1, 3), (2, 3), (3, 3)]
    again = sample(dit, (B, 16, T, H, W), ctx, ref, steps=3, shift=3.0, scheduler=scheduler,
                        generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, again)


def test_sample_with_guidance_and_single_step(dit, batch):
    x0, ref, ctx = batch
    noise = torch.randn(1, 16, 1, H, W)
    out = sample(dit, noise, ctx[:1], ref[:1], steps=2, guidance=3.0, negative_context=flow.zero_context(1, 2))
    assert out.shape == noise.shape
    # one Euler step from sigma 1 lands on x_1 - v: the model's clean estimate
    one = sample(dit, noise, ctx[:1], steps=1, scheduler="euler")
    with torch.no_grad():
        v = flow.denoise_once(dit, noise, 1.0, ctx[:1])
    assert torch.allclose(one, noise - v, atol=1e-5)


def test_bad_inputs_are_clear_errors(dit, batch):
    x0, ref, ctx = batch
    assert torch.isfinite(flow.flow_matching_loss(dit, x0, ctx[:1], sigma=0.5))  # scalar sigma, context broadcast
    with pytest.raises(InputError, match="sigma: expected a number"):
        flow.flow_matching_loss(dit, x0, ctx, sigma=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(InputError, match="x0: expected a latent"):
        flow.flow_matching_loss(dit, x0[:, :4], ctx)
    with pytest.raises(InputError, match="multiples of the DiT patch"):
        flow.flow_matching_loss(dit, x0[..., :7], ctx)
    with pytest.raises(InputError, match="reference: expected the identity latent"):
        flow.flow_matching_loss(dit, x0, ctx, ref[..., :4])
    with pytest.raises(InputError, match="context: expected text features"):
        flow.flow_matching_loss(dit, x0, torch.zeros(B, 1, 512))
    with pytest.raises(InputError, match="scheduler"):
        sample(dit, (1, 16, 1, H, W), ctx[:1], scheduler="ddim")
    with pytest.raises(InputError, match="steps"):
        sample(dit, (1, 16, 1, H, W), ctx[:1], steps=0)
