"""io.video: the one reader/writer (files generated here)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from imanim_core.errors import InputError
from imanim_core.io.video import iter_video, read_image, read_video, to_rgb, video_info, write_video


def moving_square(T=9, H=48, W=64):
    f = np.zeros((T, H, W, 3), np.uint8)
    f[..., 2] = 40  # blue-ish background: checks RGB order survives the round trip
    for t in range(T):
        f[t, 10:26, 4 + 4 * t:20 + 4 * t, 0] = 230  # red square moving right
    return f


def test_write_read_round_trip(tmp_path):
    frames = moving_square()
    out = write_video(tmp_path / "sub" / "clip.mp4", frames, fps=12)
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["clip.mp4"]  # no temp file left
    v, fps = read_video(out)
    assert v.shape == frames.shape and v.dtype == np.uint8 and fps == pytest.approx(12.0)
    assert np.abs(v.astype(int) - frames).mean() < 4
    # red stays red (not swapped with blue), and the square moved
    assert v[4, 18, 12 + 16, 0] > 200 and v[4, 18, 12 + 16, 2] < 100
    v3, _ = read_video(out, max_frames=3)
    assert v3.shape[0] == 3
    # a float torch IMAGE tensor also writes
    write_video(tmp_path / "f.mp4", torch.from_numpy(frames).float() / 255.0, fps=8)
    assert read_video(tmp_path / "f.mp4")[0].shape == frames.shape


def test_streaming_matches_read_video(tmp_path):
    frames = moving_square(T=7)
    path = write_video(tmp_path / "s.mp4", frames, fps=10)
    assert video_info(path) == {"frames": 7, "fps": 10.0, "width": 64, "height": 48}
    chunks = list(iter_video(path, chunk=3))
    assert [c.shape[0] for c in chunks] == [3, 3, 1]
    assert np.array_equal(np.concatenate(chunks), read_video(path)[0])
    assert sum(c.shape[0] for c in iter_video(path, chunk=4, max_frames=5)) == 5
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f"{i}.png"), frames[i][..., ::-1])
    assert video_info(d)["frames"] == 5
    assert [c.shape[0] for c in iter_video(d, chunk=2)] == [2, 2, 1]
    with pytest.raises(InputError, match="does not exist"):
        iter_video(tmp_path / "missing.mp4")  # fails at the call, not on first use


def test_other_containers(tmp_path):
    frames = moving_square(T=5)
    v, _ = read_video(write_video(tmp_path / "clip.mkv", frames, fps=10))
    assert v.shape == frames.shape
    w = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 15, (64, 48))
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    v, fps = read_video(tmp_path / "clip.avi")
    assert v.shape == frames.shape and fps == pytest.approx(15.0)
    assert np.abs(v.astype(int) - frames).mean() < 4


def test_odd_size_is_padded(tmp_path):
    frames = np.full((3, 33, 47, 3), 128, np.uint8)
    v, _ = read_video(write_video(tmp_path / "odd.mp4", frames, fps=25))
    assert v.shape == (3, 34, 48, 3)
    assert np.abs(v[:, :33, :47].astype(int) - 128).max() <= 3


def test_failed_write_leaves_nothing(tmp_path):
    bad = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)]
    target = tmp_path / "x.mp4"
    with pytest.raises(InputError, match="fps"):
        write_video(target, np.stack(bad), fps=0)
    with pytest.raises(InputError, match="no frames"):
        write_video(target, np.zeros((0, 16, 16, 3), np.uint8), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_folder_natural_sort_and_gif(tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2, 10):
        img = np.full((8, 10, 3), i * 20, np.uint8)
        cv2.imwrite(str(d / f"frame_{i}.png"), img)
    (d / "notes.txt").write_text("ignored")
    v, fps = read_video(d)
    assert v.shape == (3, 8, 10, 3) and fps == 25.0
    assert [int(v[i, 0, 0, 0]) for i in range(3)] == [20, 40, 200]  # 2 before 10
    assert read_video(d, max_frames=2)[0].shape[0] == 2
    Image = pytest.importorskip("PIL.Image")
    frames = moving_square(T=4, H=20, W=30)
    imgs = [Image.fromarray(f) for f in frames]
    imgs[0].save(tmp_path / "a.gif", save_all=True, append_images=imgs[1:], duration=100, loop=0)
    g, gfps = read_video(tmp_path / "a.gif")
    assert g.shape == (4, 20, 30, 3) and gfps == pytest.approx(10.0)


def test_folder_with_mixed_sizes(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    cv2.imwrite(str(d / "0.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(d / "1.png"), np.zeros((9, 8, 3), np.uint8))
    with pytest.raises(InputError, match="1.png.*one size"):
        read_video(d)


def test_read_image_conversions(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    im = read_image(tmp_path / "g.png")
    assert im.shape == (8, 8, 3) and np.array_equal(im[..., 0], grey) and np.array_equal(im[..., 2], grey)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200  # R
    rgba[:2, :, 3] = 255  # top half opaque, bottom transparent
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    im = read_image(tmp_path / "a.png")
    assert im.shape == (4, 4, 3)
    assert np.all(im[:2, :, 0] == 200) and np.all(im[2:] == 0)  # composited over black
    deep = np.full((4, 4, 3), 65535, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    assert np.all(read_image(tmp_path / "d.png") == 255)
    # a single image is a 1-frame video
    v, fps = read_video(tmp_path / "a.png")
    assert v.shape == (1, 4, 4, 3)


def test_to_rgb():
    g = np.full((2, 3), 7, np.uint8)
    assert to_rgb(g).shape == (2, 3, 3)
    ga = np.stack([np.full((2, 2), 100, np.uint8), np.full((2, 2), 255, np.uint8)], -1)
    assert np.all(to_rgb(ga) == 100)
    t = torch.ones(1, 2, 2, 4) * 0.5
    out = to_rgb(t)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 2, 3) and torch.allclose(out, torch.tensor(0.25))
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert to_rgb(rgb) is rgb


def test_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="nope.mp4.*does not exist"):
        read_video(tmp_path / "nope.mp4")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(InputError, match="empty_dir.*has no images"):
        read_video(empty)
    txt = tmp_path / "fake.mp4"
    txt.write_text("not a video at all\n" * 50)
    with pytest.raises(InputError, match="fake.mp4"):
        read_video(txt)
    zero = tmp_path / "zero.mp4"
    zero.write_bytes(b"")
    with pytest.raises(InputError, match="zero.mp4"):
        read_video(zero)
    bad_img = tmp_path / "bad.png"
    bad_img.write_text("nope")
    with pytest.raises(InputError, match="bad.png.*could not be decoded"):
        read_image(bad_img)
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "missing.png")
