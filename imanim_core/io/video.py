"""The project's one video/image reader and writer.

- :func:`read_video` — mp4/webm/gif/mov/avi/mkv (OpenCV's FFmpeg backend), a folder of images (natural sort:
  ``2.png`` before ``10.png``), or a single image -> ``(uint8 [T,H,W,3] RGB, fps)``.
- :func:`iter_video` / :func:`video_info` — the same sources streamed in chunks (long videos need not fit in
  memory) and their frame count / fps / size without decoding.
- :func:`read_image` — one image -> ``uint8 [H,W,3]`` RGB. Grey is repeated to RGB; an alpha channel is
  composited **over black** (the tokenizer pads with black too, so a cut-out character stays on the same
  background; the nodes do the same with an RGBA IMAGE, ``checks.image_batch``); 16-bit images are scaled to 8
  bits; a float image (TIFF/EXR) with NaN or infinite values is refused.
- :func:`to_rgb` — the same channel conversion for arrays/tensors already in memory; :func:`to_float` — the one
  pixel-type conversion (uint8 / uint16 / float, numpy or torch -> float32 torch in [0, 1]) every module uses.
- :func:`write_video` — H.264 (yuv420p) via imageio-ffmpeg's bundled ffmpeg; odd sizes are padded by one
  edge-replicated row/column; written to a temporary file in the same folder and renamed into place, so the target
  is never half-written.

Errors (missing path, empty folder or video, unreadable file) are :class:`InputError` naming the path.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .atomic import atomic_output

from ..errors import InputError

VIDEO_EXTS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DEFAULT_FPS = 25.0  # for image folders, single images and videos that do not state a frame rate


def to_float(pixels, where: str = "frames"):
    """Pixels (numpy or torch, any shape) -> float32 torch tensor on the same device (CPU for numpy): uint8 / 255,
    uint16 / 65535, bool 0/1, floats as they are (assumed in [0, 1]; not clamped). The one uint8/float converter
    of the project (identity images, driving frames, the tokenizer, the metrics, the data sets)."""
    import torch

    if isinstance(pixels, np.ndarray):
        a = pixels
        if a.dtype == np.uint8 or a.dtype == np.bool_:
            t = torch.from_numpy(np.ascontiguousarray(a) if a.flags.writeable else a.copy())
        elif a.dtype == np.uint16:
            return torch.from_numpy(a.astype(np.float32) / 65535.0)
        elif np.issubdtype(a.dtype, np.floating):
            a = np.ascontiguousarray(a, dtype=np.float32)
            return torch.from_numpy(a if a.flags.writeable else a.copy())
        else:
            raise InputError(f"{where}: unsupported pixel type {a.dtype}; expected uint8 or float in [0, 1]")
    elif isinstance(pixels, torch.Tensor):
        t = pixels
    else:
        raise InputError(f"{where}: expected a numpy array or a torch tensor, got {type(pixels).__name__}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype == torch.bool or t.is_floating_point():
        return t.float()
    raise InputError(f"{where}: unsupported pixel type {t.dtype}; expected uint8 or float in [0, 1]")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def to_rgb(array, where: str = "image"):
    """Convert ``[..., H, W]`` grey, ``[..., H, W, 1|2|3|4]`` (grey, grey+alpha, RGB, RGBA) to ``[..., H, W, 3]``.

    numpy or torch; uint8 stays uint8 (uint16 becomes uint8), floats stay floats (assumed in [0, 1]). Alpha is
    composited over black (colour * alpha). Channel order is taken as RGB(A), not BGR.
    """
    import torch

    is_torch = isinstance(array, torch.Tensor)
    a = array
    if not is_torch:
        a = np.asarray(a)
        if a.dtype == np.uint16:
            a = (a.astype(np.uint32) * 255 + 32767) // 65535
            a = a.astype(np.uint8)
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
    if a.ndim < 2:
        raise InputError(f"{where}: expected an image [H,W] or [H,W,C], got shape {tuple(a.shape)}")
    last = a.shape[-1]
    if a.ndim == 2 or last not in (1, 2, 3, 4):
        # [H,W] grey (or [T,H,W] grey stack when the last dim is not a channel count)
        a = a[..., None]
        last = 1
    if last == 3:
        return a
    floating = a.is_floating_point() if is_torch else np.issubdtype(a.dtype, np.floating)
    if last in (1, 2):
        rgb = a[..., :1]
        rgb = rgb.expand(*rgb.shape[:-1], 3) if is_torch else np.repeat(rgb, 3, axis=-1)
    else:
        rgb = a[..., :3]
    if last in (2, 4):
        alpha = a[..., -1:]
        if floating:
            rgb = rgb * alpha
        elif is_torch:
            rgb = ((rgb.to(torch.int32) * alpha.to(torch.int32) + 127) // 255).to(a.dtype)
        else:
            rgb = ((rgb.astype(np.uint32) * alpha.astype(np.uint32) + 127) // 255).astype(a.dtype)
    return rgb.contiguous() if is_torch else np.ascontiguousarray(rgb)


def _decode_image(path: Path) -> np.ndarray:
    import cv2

    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # works with non-ASCII paths, unlike cv2.imread
    except OSError as e:
        raise InputError(f"image {str(path)!r} could not be read: {e}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None and path.suffix.lower() == ".gif":
        return next(_iter_video_file(path, 1, 1))[0]
    if img is None:
        raise InputError(f"image {str(path)!r} could not be decoded (not an image, or a format OpenCV cannot read; "
                         f"supported: {', '.join(IMAGE_EXTS)})")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    if img.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(img.dtype, np.floating):
            from ..checks import check_finite

            check_finite(img, f"image {str(path)!r}", "pixel values")  # float TIFF/EXR: NaN would become black
            img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise InputError(f"image {str(path)!r}: unsupported pixel type {img.dtype}")
    return to_rgb(img, where=f"image {str(path)!r}")


def read_image(path) -> np.ndarray:
    """One image file -> ``uint8 [H,W,3]`` RGB (grey -> RGB, alpha over black, 16-bit -> 8-bit)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"image {str(p)!r} does not exist")
    if p.is_dir():
        raise InputError(f"image {str(p)!r} is a folder; expected an image file")
    return _decode_image(p)


def _open_capture(p: Path):
    import cv2

    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"video {str(p)!r} could not be opened (not a video, corrupt, or a format the bundled "
                         f"FFmpeg cannot read; supported: {', '.join(VIDEO_EXTS)} or a folder of images)")
    return cap


def _capture_fps(cap) -> float:
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if np.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS


def _iter_video_file(p: Path, chunk: int, max_frames: Optional[int]):
    import cv2

    cap = _open_capture(p)
    try:
        n, shape, buf = 0, None, []
        while max_frames is None or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            elif frame.shape[2] == 4:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
            else:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if shape is None:
                shape = frame.shape
            elif frame.shape != shape:  # rare (some gifs/streams): refuse rather than return a ragged video
                raise InputError(f"video {str(p)!r}: frame {n} has size {frame.shape[1]}x{frame.shape[0]}, the "
                                 f"first frame {shape[1]}x{shape[0]}; re-encode the video at one size")
            buf.append(frame)
            n += 1
            if len(buf) == chunk:
                yield np.stack(buf, 0)
                buf = []
        if buf:
            yield np.stack(buf, 0)
        if n == 0:
            raise InputError(f"video {str(p)!r} has no readable frames (empty or corrupt)")
    finally:
        cap.release()


def list_image_files(folder) -> list:
    """Image files directly in ``folder``, naturally sorted (``frame_2`` before ``frame_10``)."""
    p = Path(folder)
    files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")]
    return sorted(files, key=lambda f: _natural_key(f.name))


def _check_source(path, max_frames) -> Path:
    if max_frames is not None and int(max_frames) < 1:
        raise InputError(f"max_frames must be >= 1, got {max_frames}")
    p = Path(path)
    if not p.exists():
        raise InputError(f"driving video {str(p)!r} does not exist")
    if p.is_dir() and not list_image_files(p):
        raise InputError(f"driving video folder {str(p)!r} has no images ({', '.join(IMAGE_EXTS)})")
    return p


def video_info(path, folder_fps: float = DEFAULT_FPS) -> dict:
    """``{"frames", "fps", "width", "height"}`` without decoding the whole video. ``frames`` is exact for folders
    and images, the container's count for files (an estimate for some formats; None when unknown)."""
    p = _check_source(path, None)
    if p.is_dir():
        files = list_image_files(p)
        h, w = _decode_image(files[0]).shape[:2]
        return {"frames": len(files), "fps": float(folder_fps), "width": w, "height": h}
    if p.suffix.lower() in IMAGE_EXTS:
        h, w = _decode_image(p).shape[:2]
        return {"frames": 1, "fps": float(folder_fps), "width": w, "height": h}
    import cv2

    cap = _open_capture(p)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return {"frames": n if n > 0 else None, "fps": _capture_fps(cap),
                "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}
    finally:
        cap.release()


def iter_video(path, chunk: int = 32, max_frames: Optional[int] = None):
    """Stream a video file / image folder / image as ``uint8 [t,H,W,3]`` RGB chunks of up to ``chunk`` frames
    (so a long video never has to fit in memory). Same sources, order and errors as :func:`read_video`; a missing
    path or an empty folder fails here, before iterating."""
    if int(chunk) < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    p = _check_source(path, max_frames)
    limit = None if max_frames is None else int(max_frames)
    if p.is_dir():
        return _iter_folder(p, int(chunk), limit)
    if p.suffix.lower() in IMAGE_EXTS:
        return iter([_decode_image(p)[None]])
    return _iter_video_file(p, int(chunk), limit)


def _iter_folder(p: Path, chunk: int, limit: Optional[int]):
    files = list_image_files(p)[:limit]
    first = None
    for s in range(0, len(files), chunk):
        frames = []
        for f in files[s:s + chunk]:
            img = _decode_image(f)
            if first is None:
                first = (files[0].name, img.shape)
            elif img.shape != first[1]:
                raise InputError(f"driving video folder {str(p)!r}: {f.name} is {img.shape[1]}x{img.shape[0]}, "
                                 f"{first[0]} is {first[1][1]}x{first[1][0]}; all images must have one size")
            frames.append(img)
        yield np.stack(frames, 0)


def read_video(path, max_frames: Optional[int] = None, folder_fps: float = DEFAULT_FPS) -> tuple:
    """A video file, a folder of images, or one image -> ``(uint8 [T,H,W,3] RGB, fps: float)``.

    ``max_frames`` reads only the first frames. Folders and single images get ``folder_fps``; all images of a
    folder must have one size. Videos that state no frame rate get ``DEFAULT_FPS``.
    """
    p = _check_source(path, max_frames)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        fps = float(folder_fps)
    else:
        cap = _open_capture(p)
        fps = _capture_fps(cap)
        cap.release()
    chunks = list(iter_video(p, chunk=256, max_frames=max_frames))
    return (chunks[0] if len(chunks) == 1 else np.concatenate(chunks, 0)), fps


def _frames_uint8(frames) -> np.ndarray:
    try:
        import torch
        if isinstance(frames, torch.Tensor):
            frames = frames.detach().cpu()
            frames = frames.float().numpy() if frames.is_floating_point() else frames.numpy()
    except ImportError:  # pragma: no cover
        pass
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None] if a.shape[-1] in (1, 3, 4) else a  # one image, or a grey stack
    if a.ndim not in (3, 4):
        raise InputError(f"frames: expected [T,H,W,3], got shape {a.shape}")
    if a.shape[0] == 0:
        raise InputError("frames: no frames to write")
    if np.issubdtype(a.dtype, np.floating):
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8 and a.dtype != np.uint16:
        raise InputError(f"frames: expected uint8 or float in [0, 1], got {a.dtype}")
    a = to_rgb(a, where="frames")
    if a.ndim != 4 or a.shape[1] == 0 or a.shape[2] == 0:
        raise InputError(f"frames: expected [T,H,W,3] with a non-empty image, got shape {a.shape}")
    return a


def write_video(path, frames, fps: float, crf: int = 18) -> Path:
    """Write frames (uint8 or float [0,1], ``[T,H,W,3]``, numpy or torch) as H.264 yuv420p; returns the path.

    Odd widths/heights are padded by one replicated row/column (yuv420p needs even sizes). ``crf`` 0-51 (lower =
    better, 18 ~ visually lossless). The file appears under ``path`` only once complete.
    """
    import imageio_ffmpeg

    try:
        fps = float(fps)
    except (TypeError, ValueError):
        raise InputError(f"fps must be a number, got {fps!r}") from None
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    if not 0 <= int(crf) <= 51:
        raise InputError(f"crf must be in 0..51, got {crf}")
    a = _frames_uint8(frames)
    T, H, W, _ = a.shape
    ph, pw = H % 2, W % 2
    if ph or pw:
        a = np.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output {str(p)!r} is a folder; expected a file name such as out.mp4")
    suffix = p.suffix if p.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v") else ".mp4"
    with atomic_output(p, suffix=suffix) as tmp:
        gen = imageio_ffmpeg.write_frames(
            str(tmp), (W + pw, H + ph), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
            quality=None, bitrate=None, macro_block_size=1, ffmpeg_log_level="error",
            output_params=["-crf", str(int(crf))])
        gen.send(None)
        try:
            for f in a:
                gen.send(np.ascontiguousarray(f))
        finally:
            gen.close()
        if os.path.getsize(tmp) == 0:
            raise InputError(f"writing {str(p)!r} produced an empty file")
    return p


__all__ = ["read_video", "iter_video", "video_info", "read_image", "to_rgb", "to_float", "write_video",
           "list_image_files", "VIDEO_EXTS", "IMAGE_EXTS", "DEFAULT_FPS"]
