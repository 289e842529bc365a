"""Unit tests of the window planner (imanim_core/windows.py)."""
import pytest
import torch

from imanim_core.errors import InputError
from imanim_core.windows import (Window, blend, blend_weights, latent_frame_count, overlap_latent_count,
                                 pad_frames, padded_frame_count, plan_frame_windows, plan_windows,
                                 window_latent_count)


def test_frame_counts():
    assert [padded_frame_count(t) for t in (1, 2, 5, 6, 9, 16, 17, 18)] == [1, 5, 5, 9, 9, 17, 17, 21]
    assert [latent_frame_count(t) for t in (1, 5, 9, 16, 17, 81)] == [1, 2, 3, 5, 5, 21]
    assert window_latent_count(81) == 21 and window_latent_count(5) == 2
    assert overlap_latent_count(16) == 4 and overlap_latent_count(7) == 1 and overlap_latent_count(0) == 0
    for bad in (0, 1, 4, 8, 10):
        with pytest.raises(InputError, match="window"):
            window_latent_count(bad)
    with pytest.raises(InputError, match="overlap"):
        overlap_latent_count(-4)
    with pytest.raises(InputError):
        padded_frame_count(0)


def test_pad_frames_repeats_last():
    x = torch.arange(6.0).view(1, 6, 1)
    y = pad_frames(x, dim=1)
    assert y.shape[1] == 9 and y[0, 5:, 0].tolist() == [5.0] * 4 and torch.equal(y[:, :6], x)
    assert pad_frames(y, dim=1) is y


def test_single_window():
    assert plan_windows(5, 21, 4) == [Window(0, 5)]
    assert plan_windows(21, 21, 4) == [Window(0, 21)]
    (w,) = plan_frame_windows(17, 81, 16)
    assert w == Window(0, 5) and w.frames == slice(0, 17)
    wt = blend_weights([w], 5)
    assert torch.equal(wt, torch.ones(1, 5))


@pytest.mark.parametrize("n,w,o", [(7, 3, 1), (10, 4, 2), (25, 21, 4), (11, 5, 0), (9, 5, 4), (30, 8, 6)])
def test_coverage_overlap_and_weights(n, w, o):
    wins = plan_windows(n, w, o)
    assert wins[0].start == 0 and wins[-1].end == n
    assert all(win.length == w for win in wins)
    for a, b in zip(wins, wins[1:], strict=False):
        assert b.start > a.start
        assert a.end - b.start >= o  # at least the asked overlap (the last may overlap more)
        assert b.start <= a.end  # no gap
    wt = blend_weights(wins, n, dtype=torch.float64)
    assert wt.shape == (len(wins), n)
    assert torch.allclose(wt.sum(0), torch.ones(n, dtype=torch.float64), atol=1e-12)
    assert (wt >= 0).all()
    for i, win in enumerate(wins):
        assert (wt[i, :win.start] == 0).all() and (wt[i, win.end:] == 0).all()
        assert (wt[i, win.start:win.end] > 0).all()
    # frame slices: 4n+1 frames, aligned with the latents
    for win in wins:
        fr = win.frames
        assert fr.start == 4 * win.start and (fr.stop - fr.start - 1) % 4 == 0
        assert (fr.stop - fr.start - 1) // 4 + 1 == win.length


def test_weights_ramp_across_overlap():
    wins = plan_windows(7, 4, 1)  # [0,4) [3,7)
    assert wins == [Window(0, 4), Window(3, 7)]
    wt = blend_weights(wins, 7)
    assert torch.allclose(wt[0], torch.tensor([1, 1, 1, .5, 0, 0, 0]))
    wins = plan_windows(9, 5, 3)  # [0,5) [2,7) [4,9)
    wt = blend_weights(wins, 9, dtype=torch.float64)
    assert torch.allclose(wt[0, :2], torch.ones(2, dtype=torch.float64))
    assert (wt[0, 2:5].diff() < 0).all()  # first window fades out across the overlap


def test_blend_reconstructs_a_consistent_signal():
    n = 13
    full = torch.randn(2, 3, n, 4, 4)
    wins = plan_windows(n, 5, 2)
    chunks = [full[:, :, w.latents] for w in wins]
    out = blend(chunks, wins, n, dim=2)
    assert torch.allclose(out, full, atol=1e-6)
    with pytest.raises(InputError):
        blend(chunks[:-1], wins, n)


def test_bad_overlap():
    with pytest.raises(InputError, match="overlap"):
        plan_windows(30, 5, 5)
    with pytest.raises(InputError):
        plan_windows(0, 5, 1)
