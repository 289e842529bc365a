"""Video-folder data: pose JSON mapping, the puppet-written folder, the data set, augmentation, broken folders."""
import json
import shutil

import numpy as np
import pytest
import torch

from imanim_core.data.puppet import PuppetIdentity, PuppetMotion, render_clip
from imanim_core.data.skeleton import (FLIP_PERMUTATION, JOINT_INDEX, convert_keypoints, keypoints_from_openpose,
                                       keypoints_to_openpose)
from imanim_core.data.video_folder import (Augment, VideoFolderDataset, affine_matrix, apply_affine, letterbox,
                                           validate_video_folder, write_puppet_video_folder)
from imanim_core.errors import DataError, InputError

FRAMES = 20


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vf_video")
    write_puppet_video_folder(root, num_clips=3, frames=FRAMES, size=(64, 64), seed=1, layout="video")
    return root


@pytest.fixture(scope="module")
def frames_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vf_frames")
    write_puppet_video_folder(root, num_clips=2, frames=FRAMES, size=(48, 64), seed=2, layout="frames",
                              pose_format="body25")
    return root


def _copy(src, tmp_path):
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst


# ---- pose JSON ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["dwpose", "body25", "body18"])
def test_openpose_json_round_trip(fmt):
    r = render_clip(PuppetIdentity.sample(1), PuppetMotion.sample(1), 1, size=(64, 80))
    kp, vis = r["keypoints"][0], r["visibility"][0].copy()
    vis[JOINT_INDEX["l_ear"]] = False
    js = json.loads(json.dumps(keypoints_to_openpose(kp, vis, (64, 80), fmt=fmt)))
    n = {"dwpose": 54, "body18": 54, "body25": 75}[fmt]
    assert len(js["people"][0]["pose_keypoints_2d"]) == n
    kp2, vis2 = keypoints_from_openpose(js, frame_size=(64, 80))
    want = vis.copy()
    if fmt == "body18":
        want[18:] = False  # no toes in BODY_18
    assert np.array_equal(vis2, want)
    assert np.abs(kp2[want] - kp[want]).max() < 1e-2 and (kp2[~want] == 0).all()


def test_openpose_json_variants():
    rng = np.random.default_rng(0)
    b25 = np.concatenate([rng.uniform(5, 60, (25, 2)), rng.uniform(0.5, 1, (25, 1))], 1)
    ours = convert_keypoints(b25)
    assert np.allclose(ours[8], b25[9]) and np.allclose(ours[18], b25[22]) and np.allclose(ours[19], b25[19])
    # COCO-17: the neck is the shoulders' midpoint; eyes/ears swap to our order
    c17 = np.concatenate([rng.uniform(5, 60, (17, 2)), np.ones((17, 1))], 1)
    ours = convert_keypoints(c17)
    assert np.allclose(ours[1, :2], (c17[5, :2] + c17[6, :2]) / 2) and np.allclose(ours[14], c17[2])
    assert np.allclose(ours[2], c17[6]) and ours[18, 2] == 0
    # normalised coordinates (DWPose in ComfyUI) and a canvas of another size are scaled to the frame
    flat = [0.5, 0.25, 0.9] * 18
    kp, vis = keypoints_from_openpose({"people": [{"pose_keypoints_2d": flat}]}, frame_size=(100, 200))
    assert vis[:18].all() and not vis[18:].any() and np.allclose(kp[0], [100, 25])
    flat = [50, 20, 0.9] * 18
    kp, _ = keypoints_from_openpose({"people": [{"pose_keypoints_2d": flat}], "canvas_width": 100,
                                     "canvas_height": 50}, frame_size=(100, 200))
    assert np.allclose(kp[0], [100, 40])
    # confidence threshold
    flat = [50, 20, 0.2] + [50, 20, 0.9] * 17
    _, vis = keypoints_from_openpose({"people": [{"pose_keypoints_2d": flat}]}, frame_size=(64, 64), threshold=0.3)
    assert not vis[0] and vis[1]
    for bad in ({"people": []}, {}, {"people": [{"pose_keypoints_2d": [1, 2]}]},
                {"people": [{"pose_keypoints_2d": [1.0, 2.0, 1.0] * 7}]}):
        with pytest.raises(InputError):
            keypoints_from_openpose(bad, frame_size=(64, 64), where="x.json")


# ---- the puppet-written folder --------------------------------------------------------------------------
def test_validate_puppet_folder(video_root, frames_root):
    rep = validate_video_folder(video_root)
    assert [c.name for c in rep.clips] == ["clip_0000", "clip_0001", "clip_0002"]
    for c in rep.clips:
        assert c.kind == "video" and c.num_frames == FRAMES and c.size == (64, 64) and c.fps == pytest.approx(16.0)
        assert c.keypoints.shape == (FRAMES, 20, 2) and c.visibility.all()
        meta = json.loads((c.path / "puppet.json").read_text())
        r = render_clip(PuppetIdentity.sample(meta["identity_seed"]),
                        PuppetMotion.sample(meta["motion_seed"], meta["family"]), FRAMES, 16.0, (64, 64))
        assert np.abs(c.keypoints - r["keypoints"]).max() < 1e-2
    rep = validate_video_folder(frames_root)
    assert all(c.kind == "frames" and c.size == (48, 64) and c.num_frames == FRAMES for c in rep.clips)
    assert "2 clips" in rep.summary()


def test_writer_resumes(tmp_path):
    root = tmp_path / "r"
    write_puppet_video_folder(root, 2, 4, (32, 32), seed=5, layout="frames")
    before = (root / "clip_0001" / "frames" / "000000.png").stat().st_mtime_ns
    seen = []
    write_puppet_video_folder(root, 3, 4, (32, 32), seed=5, layout="frames", progress=lambda i, n, c: seen.append(c))
    assert (root / "clip_0001" / "frames" / "000000.png").stat().st_mtime_ns == before  # kept, not rewritten
    assert seen == ["clip_0000", "clip_0001", "clip_0002"] and len(validate_video_folder(root).clips) == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("stage", [1, 2])
def test_dataset_shapes(video_root, stage):
    ds = VideoFolderDataset(video_root, num_frames=6, size=(64, 64), heatmap_size=(16, 16), stage=stage, min_gap=4,
                            samples_per_epoch=5, seed=0)
    assert len(ds) == 5
    s = ds[1]
    assert s["frames"].shape == (6, 64, 64, 3) and s["frames"].dtype == torch.float32
    assert 0 <= float(s["frames"].min()) and float(s["frames"].max()) <= 1
    assert s["keypoints"].shape == (6, 20, 2) and s["visibility"].shape == (6, 20)
    assert s["heatmaps"].shape == (6, 20, 16, 16)
    assert all(torch.equal(s[k], ds[1][k]) for k in s)  # deterministic
    if stage == 2:
        assert s["identity"].shape == (64, 64, 3) and s["identity_keypoints"].shape == (20, 2)
        assert s["target"] is s["frames"] and not bool(s["cross_identity"])
        for i in range(len(ds)):
            si = ds[i]
            gap = (si["frame_indices"] - si["identity_index"]).abs().min()
            assert gap >= 4  # the temporal bottleneck
        batch = torch.utils.data.default_collate([ds[0], ds[1]])
        assert batch["identity"].shape == (2, 64, 64, 3)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["frames"], s["frames"]) or not torch.equal(ds[1]["keypoints"], s["keypoints"])


def test_dataset_letterbox_without_augmentation(frames_root):
    """Frames 48x64 letterboxed into 64x64: keypoints move with the pixels (frames layout is lossless)."""
    ds = VideoFolderDataset(frames_root, num_frames=4, size=(64, 64), heatmap_size=None, stage=1, augment=False)
    raw = ds.clips[0]
    s = ds[0]
    idx = s["frame_indices"].tolist()
    kp = raw.keypoints[idx]
    assert np.allclose(s["keypoints"].numpy(), np.stack([kp[..., 0], kp[..., 1] + 8], -1), atol=1e-4)
    assert float(s["frames"][:, :8].abs().max()) == 0 and float(s["frames"][:, -8:].abs().max()) == 0  # padding


def test_affine_moves_keypoints_with_pixels():
    h, w = 48, 64
    img = torch.zeros(1, 3, h, w)
    img[0, :, 30, 40] = 1.0  # a dot at the right elbow
    kp = torch.full((1, 20, 2), 5.0)
    kp[0, JOINT_INDEX["r_elbow"]] = torch.tensor([40.0, 30.0])
    vis = torch.ones(1, 20, dtype=torch.bool)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for flip in (False, True):
        M = affine_matrix((h, w), angle_deg=17, scale=1.1, translate=(3, -2), flip=flip)
        out, k2, v2 = apply_affine(img, kp, vis, M, flip)
        o = out[0, 0]
        centroid = torch.stack([(o * xs).sum() / o.sum(), (o * ys).sum() / o.sum()])
        j = JOINT_INDEX["l_elbow" if flip else "r_elbow"]  # a flip swaps left and right
        assert torch.allclose(k2[0, j], centroid, atol=0.05), (flip, k2[0, j], centroid)
        assert v2[0, j]
    # joints pushed out of the image become invisible
    M = affine_matrix((h, w), translate=(100, 0))
    _, k3, v3 = apply_affine(img, kp, vis, M, False)
    assert not v3.any() and (k3 == 0).all()


def test_dataset_augmentation_consistent_and_flip_swaps(tmp_path):
    """End to end: a clip whose frames carry a dot at the right wrist; after letterbox + random affine + flip the
    keypoint still lands on the dot, and under a flip it is the left wrist that does."""
    import cv2

    root = tmp_path / "dots"
    clip = root / "c"
    (clip / "frames").mkdir(parents=True)
    (clip / "pose").mkdir()
    rng = np.random.default_rng(0)
    for t in range(10):
        img = np.zeros((40, 56, 3), np.uint8)
        x, y = int(rng.integers(15, 41)), int(rng.integers(12, 28))
        img[y - 1:y + 2, x - 1:x + 2] = 255  # a 3x3 dot centred on (x, y)
        cv2.imwrite(str(clip / "frames" / f"{t:06d}.png"), img)
        kp = np.full((20, 2), 20.0)
        kp[JOINT_INDEX["r_wrist"]] = (x, y)
        (clip / "pose" / f"{t:06d}.json").write_text(json.dumps(keypoints_to_openpose(kp, np.ones(20, bool), (40, 56))))
    aug = Augment(flip_p=0.5, degrees=20, scale=(0.9, 1.1), translate=0.05, brightness=0, contrast=0, saturation=0,
                  hue=0)
    ds = VideoFolderDataset(root, num_frames=3, size=(64, 64), heatmap_size=(16, 16), stage=2, min_gap=2,
                            augment=aug, samples_per_epoch=8, seed=3)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    flips = 0
    for i in range(len(ds)):
        s = ds[i]
        frames = torch.cat([s["frames"], s["identity"][None]])
        kps = torch.cat([s["keypoints"], s["identity_keypoints"][None]])
        vis = torch.cat([s["visibility"], s["identity_visibility"][None]])
        assert vis.all()
        rw, lw = JOINT_INDEX["r_wrist"], JOINT_INDEX["l_wrist"]
        # which wrist carries the dot: the other joints all sit at one filler position
        filler = kps[:, JOINT_INDEX["nose"]]
        dot_j = lw if (kps[0, lw] - filler[0]).abs().sum() > 1e-3 else rw
        flips += dot_j == lw
        for t in range(frames.shape[0]):
            o = frames[t, ..., 0]
            c = torch.stack([(o * xs).sum() / o.sum(), (o * ys).sum() / o.sum()])
            assert torch.allclose(kps[t, dot_j], c, atol=0.3), (i, t, kps[t, dot_j], c)
            assert torch.equal(kps[t, FLIP_PERMUTATION[dot_j]], filler[t])  # the other wrist is where the filler is
        pk = s["heatmaps"][0, dot_j]
        assert float(pk.max()) > 0.5
    assert 0 < flips < len(ds)


# ---- broken folders -------------------------------------------------------------------------------------
def _err(root) -> str:
    with pytest.raises(DataError) as e:
        validate_video_folder(root)
    return str(e.value)


def test_empty_or_missing_folder(tmp_path):
    assert "does not exist" in _err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "is empty" in _err(tmp_path / "empty")
    (tmp_path / "noframes" / "clip").mkdir(parents=True)
    msg = _err(tmp_path / "noframes")
    assert "clip" in msg and "no frames" in msg


def test_missing_pose_file(frames_root, tmp_path):
    root = _copy(frames_root, tmp_path)
    (root / "clip_0001" / "pose" / "000005.json").unlink()
    msg = _err(root)
    assert "clip_0001" in msg and "missing pose for frame 5" in msg and "000005.json" in msg
    assert "frame count mismatch" in msg


def test_bad_json_and_no_people(frames_root, tmp_path):
    root = _copy(frames_root, tmp_path)
    (root / "clip_0000" / "pose" / "000003.json").write_text("{not json")
    (root / "clip_0001" / "pose" / "000007.json").write_text(json.dumps({"people": []}))
    msg = _err(root)
    assert "clip_0000/pose/000003.json: unreadable JSON" in msg.replace("\\", "/")
    assert "clip_0001/pose/000007.json" in msg.replace("\\", "/") and "no people" in msg
    # people: [] may be allowed (all joints invisible); the bad JSON still is not
    (root / "clip_0000" / "pose" / "000003.json").write_text(json.dumps({"people": []}))
    rep = validate_video_folder(root, allow_empty_frames=True)
    assert not rep.clips[1].visibility[7].any() and rep.clips[1].visibility[6].all()


def test_frame_count_mismatch(frames_root, video_root, tmp_path):
    root = _copy(frames_root, tmp_path)
    (root / "clip_0000" / "frames" / f"{FRAMES - 1:06d}.png").unlink()
    msg = _err(root)
    assert "clip_0000" in msg and "frame count mismatch" in msg and f"{FRAMES - 1} frames" in msg
    root2 = tmp_path / "v"
    shutil.copytree(video_root, root2)
    shutil.copy(root2 / "clip_0002" / "pose" / "000000.json", root2 / "clip_0002" / "pose" / f"{FRAMES:06d}.json")
    msg = _err(root2)
    assert "clip_0002" in msg and "frame count mismatch" in msg and f"frame(s) [{FRAMES}]" in msg


def test_other_layout_problems(frames_root, tmp_path):
    root = _copy(frames_root, tmp_path)
    shutil.rmtree(root / "clip_0000" / "pose")
    (root / "clip_0001" / "video.mp4").write_bytes(b"")
    msg = _err(root)
    assert "clip_0000/pose: missing pose folder" in msg.replace("\\", "/")
    assert "clip_0001" in msg and "more than one frame source" in msg


def test_clips_too_short(frames_root):
    with pytest.raises(DataError, match="long enough"):
        VideoFolderDataset(frames_root, num_frames=16, stage=2, min_gap=8)
    ds = VideoFolderDataset(frames_root, num_frames=16, stage=1, size=None, augment=False, heatmap_size=None)
    assert ds[0]["frames"].shape == (16, 48, 64, 3)


def test_letterbox_maps_pixel_centres():
    img = np.zeros((30, 60, 3), np.uint8)
    img[10:13, 40:43] = 255  # centre (41, 11)
    out, (sx, sy), (px, py) = letterbox(img, (64, 64))
    assert out.shape == (64, 64, 3) and (sx, sy) == (64 / 60, 32 / 30) and (px, py) == (0, 16)
    o = out[..., 0].astype(np.float64)
    yy, xx = np.mgrid[0:64, 0:64]
    c = ((o * xx).sum() / o.sum(), (o * yy).sum() / o.sum())
    assert np.allclose(c, ((41 + 0.5) * sx - 0.5 + px, (11 + 0.5) * sy - 0.5 + py), atol=0.05)


def test_make_puppet_data_command(tmp_path, capsys):
    import argparse

    from imanim_core.commands import make_puppet_data

    p = argparse.ArgumentParser()
    make_puppet_data.add_arguments(p)
    args = p.parse_args([str(tmp_path / "out"), "--clips", "2", "--frames", "3", "--size", "32", "48",
                         "--layout", "frames", "--families", "wave,jump"])
    assert make_puppet_data.run(args) == 0
    assert "2 clips, 6 frames, sizes [(32, 48)]" in capsys.readouterr().out
    fams = [json.loads((tmp_path / "out" / c / "puppet.json").read_text())["family"]
            for c in ("clip_0000", "clip_0001")]
    assert fams == ["wave", "jump"]
