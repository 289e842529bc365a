"""Puppet world: determinism, body variety, exact cross-identity targets, framing, data set; skeleton helpers."""
import numpy as np
import pytest
import torch

from imanim_core.config import NUM_JOINTS
from imanim_core.data.heatmaps import heatmap_argmax
from imanim_core.data.puppet import (ANGLE_NAMES, BODY_TYPES, FAMILIES, PuppetDataset, PuppetIdentity, PuppetMotion,
                                     forward_kinematics, render_clip, sample_pair)
from imanim_core.data.skeleton import (BONES, FLIP_PERMUTATION, JOINT_NAMES, LIMB_BONES, PARENT, angle_difference,
                                       bone_angles, bone_lengths, draw_skeleton, flip_keypoints)
from imanim_core.errors import InputError

SIZE = (96, 80)


def test_skeleton_tables():
    assert len(JOINT_NAMES) == NUM_JOINTS == 20
    assert len(BONES) == NUM_JOINTS - 1 and PARENT.count(-1) == 1  # a tree rooted at the neck
    assert JOINT_NAMES[:4] == ("nose", "neck", "r_shoulder", "r_elbow")
    assert JOINT_NAMES[18:] == ("r_big_toe", "l_big_toe")
    perm = np.array(FLIP_PERMUTATION)
    assert np.array_equal(perm[perm], np.arange(NUM_JOINTS))  # an involution
    for i, n in enumerate(JOINT_NAMES):
        m = JOINT_NAMES[perm[i]]
        side = {"r_": "l_", "l_": "r_"}.get(n[:2])
        assert m == (side + n[2:] if side else n)


def test_determinism_by_seed():
    for fam in FAMILIES:
        a = render_clip(PuppetIdentity.sample(5), PuppetMotion.sample(9, fam), 4, 8.0, SIZE, start_time=1.0)
        b = render_clip(PuppetIdentity.sample(5), PuppetMotion.sample(9, fam), 4, 8.0, SIZE, start_time=1.0)
        for k in ("frames", "keypoints", "masks", "angles"):
            assert np.array_equal(a[k], b[k]), (fam, k)
    assert PuppetIdentity.sample(3) == PuppetIdentity.sample(3) != PuppetIdentity.sample(4)
    p1, p2 = sample_pair(11, 4, 8.0, SIZE), sample_pair(11, 4, 8.0, SIZE)
    assert np.array_equal(p1["target"]["frames"], p2["target"]["frames"])
    assert np.array_equal(p1["identity"]["frames"], p2["identity"]["frames"])
    # motions are continuous in time: sampled at any fps they agree at shared times
    m = PuppetMotion.sample(2, "dance")
    assert np.allclose(m.angles(np.arange(8) / 8.0)[::2], m.angles(np.arange(4) / 4.0))


def test_identities_differ_in_proportions():
    ids = [PuppetIdentity.sample(s) for s in range(40)]
    keys = ("head", "arm", "leg", "shoulders", "width")
    props = np.array([[i.proportions()[k] for k in keys] for i in ids])
    assert len({tuple(np.round(r, 6)) for r in props}) == len(ids)
    assert np.all(props.std(0) / props.mean(0) > 0.04)  # every ratio varies
    assert {i.body_type for i in ids} == set(BODY_TYPES)
    child, thin = PuppetIdentity.sample(0, "child"), PuppetIdentity.sample(0, "tall_thin")
    broad = PuppetIdentity.sample(0, "broad")
    assert child.height < thin.height and child.proportions()["head"] > thin.proportions()["head"]
    assert broad.proportions()["width"] > thin.proportions()["width"]


@pytest.mark.parametrize("seed", range(8))
def test_cross_identity_target_keeps_b_body_and_a_angles(seed):
    fam = FAMILIES[seed % len(FAMILIES)]
    p = sample_pair(seed, 6, 8.0, SIZE, cross_identity=True, family=fam)
    drv, tgt, ident = p["driving"], p["target"], p["identity"]
    assert p["identity_A"] != p["identity_B"]
    assert np.array_equal(drv["times"], tgt["times"]) and np.array_equal(drv["angles"], tgt["angles"])
    # angles measured from the keypoints: the target's limbs point exactly where the driver's do
    d = angle_difference(bone_angles(tgt["keypoints"]), bone_angles(drv["keypoints"]))
    assert np.abs(d).max() < 1e-3
    # lengths: the target has B's bones (as in B's identity frame, another pose), not A's
    lt, lb, la = (bone_lengths(x["keypoints"], LIMB_BONES) for x in (tgt, ident, drv))
    assert np.allclose(lt, lb[0], atol=2e-3)
    idb = p["identity_B"]
    ppu = tgt["pixels_per_unit"]
    assert np.allclose(lt[:, 0], idb.upper_arm * ppu, rtol=1e-4) and np.allclose(lt[:, 4], idb.thigh * ppu, rtol=1e-4)
    assert np.abs(lt - la).max() > 0.5  # and they are not A's
    assert tgt["fit_scale"] == drv["fit_scale"] == ident["fit_scale"] == 1.0
    # B's look: the target shows B's background, the driving clip A's
    assert np.array_equal(tgt["frames"][0, 0, 0], ident["frames"][0, 0, 0])


def test_temporal_bottleneck_pair():
    p = sample_pair(3, 8, 16.0, SIZE, cross_identity=False, min_gap=1.0)
    t = p["driving"]["times"]
    assert p["target"] is p["driving"] and p["identity_A"] == p["identity_B"]
    assert min(abs(p["identity_time"] - t[0]), abs(p["identity_time"] - t[-1])) >= 1.0
    assert p["identity_time"] < t[0] or p["identity_time"] > t[-1]


@pytest.mark.parametrize("fam", FAMILIES)
def test_render_outputs_and_framing(fam):
    for s in range(4):
        idn = PuppetIdentity.sample(100 + s, BODY_TYPES[s])
        r = render_clip(idn, PuppetMotion.sample(200 + s, fam), 10, 3.0, SIZE)  # 3 s of motion
        T, (H, W) = 10, SIZE
        assert r["frames"].shape == (T, H, W, 3) and r["frames"].dtype == np.uint8
        assert r["keypoints"].shape == (T, 20, 2) and r["keypoints"].dtype == np.float32
        assert r["visibility"].shape == (T, 20) and r["visibility"].all()
        assert r["masks"].shape == (T, H, W) and r["masks"].dtype == bool
        assert r["angles"].shape == (T, len(ANGLE_NAMES))
        kp, m = r["keypoints"], r["masks"]
        assert (kp >= 0).all() and (kp[..., 0] <= W - 1).all() and (kp[..., 1] <= H - 1).all()
        assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any()), "touches the border"
        assert r["fit_scale"] == 1.0
        frac = m.mean(axis=(1, 2))
        assert (frac > 0.02).all() and (frac < 0.5).all()
        # the character is drawn where its joints are
        ix = np.clip(np.round(kp).astype(int), 0, [W - 1, H - 1])
        on = m[np.arange(T)[:, None], ix[..., 1], ix[..., 0]]
        assert on[:, [1, 2, 3, 5, 6, 8, 9, 11, 12]].all()


def test_feet_on_ground_unless_jumping():
    idn = PuppetIdentity.sample(1)
    t = np.arange(0, 4, 0.1)
    for fam in FAMILIES:
        m = PuppetMotion.sample(7, fam)
        P = forward_kinematics(idn, m.angles(t), m.root(t))["points"]
        lowest = P[:, [10, 18, 13, 19], 1].max(axis=1) + idn.foot_w / 2
        hop = m.root(t)[:, 1]
        assert np.allclose(lowest, -hop * idn.leg_len, atol=1e-9)
        assert (hop > 0).any() == (fam == "jump")


def test_angles_smooth_and_within_limits():
    from imanim_core.data.puppet import ANGLE_LIMITS_DEG

    t = np.arange(0, 10, 1 / 30)
    for s in range(6):
        a = np.degrees(PuppetMotion.sample(s, "random_smooth").angles(t))
        assert (a >= ANGLE_LIMITS_DEG[:, 0]).all() and (a <= ANGLE_LIMITS_DEG[:, 1]).all()
    for fam in FAMILIES:
        a = np.degrees(PuppetMotion.sample(3, fam).angles(t))
        assert np.abs(np.diff(a, axis=0)).max() < 25, fam  # < 25 degrees between frames at 30 fps


def test_bad_arguments():
    with pytest.raises(InputError):
        PuppetMotion.sample(0, "moonwalk")
    with pytest.raises(InputError):
        PuppetIdentity.sample(0, "giant")
    with pytest.raises(InputError):
        render_clip(PuppetIdentity.sample(0), PuppetMotion.sample(0), 0)
    with pytest.raises(InputError):
        render_clip(PuppetIdentity.sample(0), PuppetMotion.sample(0), 2, size=(8, 8))
    with pytest.raises(InputError):
        PuppetDataset(stage=4)


def test_supersample_and_any_size():
    idn, mot = PuppetIdentity.sample(2), PuppetMotion.sample(2)
    a = render_clip(idn, mot, 2, size=(128, 96))
    b = render_clip(idn, mot, 2, size=(128, 96), supersample=3)
    assert np.allclose(a["keypoints"], b["keypoints"])
    assert (a["masks"] != b["masks"]).mean() < 0.01  # shapes have their true size at any supersampling
    c = render_clip(idn, mot, 1, size=(200, 300))
    assert c["frames"].shape == (1, 200, 300, 3)


@pytest.mark.parametrize("stage", [1, 2])
def test_puppet_dataset(stage):
    ds = PuppetDataset(length=6, stage=stage, num_frames=4, size=(64, 64), heatmap_size=(16, 16),
                       cross_identity_prob=0.5, seed=3)
    s = ds[2]
    assert s["frames"].shape == (4, 64, 64, 3) and s["frames"].dtype == torch.float32
    assert 0 <= s["frames"].min() and s["frames"].max() <= 1
    assert s["keypoints"].shape == (4, 20, 2) and s["visibility"].dtype == torch.bool
    assert s["heatmaps"].shape == (4, 20, 16, 16)
    # heatmap peaks sit at the keypoints (scaled to the heatmap)
    peaks, _ = heatmap_argmax(s["heatmaps"])
    assert (peaks - ((s["keypoints"] + 0.5) * 16 / 64 - 0.5)).abs().max() <= 0.75
    assert all(torch.equal(s[k], ds[2][k]) for k in s)  # deterministic
    if stage == 1:
        assert "identity" not in s
    else:
        assert s["identity"].shape == (64, 64, 3) and s["target"].shape == (4, 64, 64, 3)
        assert s["target_heatmaps"].shape == (4, 20, 16, 16) and s["target_masks"].shape == (4, 64, 64)
        crosses = [bool(ds[i]["cross_identity"]) for i in range(6)]
        assert any(crosses) and not all(crosses)
        for i in range(6):
            si = ds[i]
            same = torch.equal(si["target"], si["frames"])
            assert same != bool(si["cross_identity"])
        batch = torch.utils.data.default_collate([ds[0], ds[1]])
        assert batch["frames"].shape == (2, 4, 64, 64, 3)


def test_draw_skeleton_and_flip():
    r = render_clip(PuppetIdentity.sample(4), PuppetMotion.sample(4, "wave"), 2, size=(64, 64))
    img = draw_skeleton(r["keypoints"][0], r["visibility"][0], (64, 64))
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8 and (img.sum(-1) > 0).mean() > 0.02
    clip = draw_skeleton(torch.from_numpy(r["keypoints"]), None, (32, 32), image_size=(64, 64))
    assert clip.shape == (2, 32, 32, 3)
    vis = r["visibility"][0].copy()
    vis[:] = False
    assert draw_skeleton(r["keypoints"][0], vis, (64, 64)).max() == 0
    kp, v = flip_keypoints(r["keypoints"], r["visibility"], 64)
    assert np.allclose(kp[:, 5, 0], 63 - r["keypoints"][:, 2, 0]) and np.allclose(kp[:, 5, 1], r["keypoints"][:, 2, 1])
    with pytest.raises(InputError):
        draw_skeleton(np.zeros((18, 2)), None, (32, 32))
