"""The IM-Animation nodes inside a real ComfyUI (see conftest.py for how the server is started).

Workflows come from workflows/*.json (UI format), converted to API prompts with /object_info. Until the tiny
model is embedded (imanim_core/weights/...), the tiny workflows run on random tiny weights made for the test.
Results are compared with the standalone pipeline (imanim_core.pipeline, what `python -m imanim_core animate` runs).
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import HERE, REPO, comfy_python, messages, subprocess_env  # noqa: E402
from workflow_api import ui_to_api  # noqa: E402

NODE_IDS = ["IMAnimationLoadModels", "IMAnimationEncodeMotion", "IMAnimationRetarget", "IMAnimationSampler",
            "IMAnimationSaveMotionTokens", "IMAnimationLoadMotionTokens", "IMAnimationPuppetExample"]
EMBEDDED = {  # name in the workflows -> (model folder, key in model_files)
    "imanim_tiny.safetensors": ("im_animation", "bundle"),
    "imanim_tiny_dit.safetensors": ("diffusion_models", "dit"),
    "imanim_tiny_vae.safetensors": ("vae", "vae"),
}
# max |ComfyUI latent - standalone latent| after sampling, relative to the latent's scale (fp32). The tiny VAE (TAEHV
# layout) runs frame by frame in ComfyUI and batched in time here: other conv algorithms, 3e-6 on the identity
# latent. Measured with embedded v2: 8.6e-6 at scale 16.7 (tiny_puppet_demo), 2.4e-4 at scale 15.3
# (long_video_windows, 3 windows; v1 gave ~5e-6). The windowed case's growth is not explained yet (see README):
# with embedded v3 it is 5.0e-4 at scale 16.1, while moving the identity latent by 3e-6 (the VAE's host difference)
# moves the standalone 3-window sample by only 7.5e-6 (normalised), so that is not it. A window-logic error would
# differ by whole windows (order 1), so the windowed workflows keep a looser bound, a one-window case this one. Since
# v4 tiny_puppet_demo samples in windows of 9 frames (overlap 4; 2 windows for its 17 frames): 7.2e-6 at scale 6.9.
LATENT_TOL = 2e-5
LATENT_TOL_WINDOWED = 5e-5
FRAME_TOL = 3  # max uint8 difference of the decoded frames (ComfyUI's VAE vs diffusers', truncation vs rounding)


# ------------------------------------------------------------------------------------------------- helpers
def embedded_present() -> bool:
    return all((REPO / "imanim_core" / "weights" / folder / name).is_file() for name, (folder, _) in EMBEDDED.items())


def weights(model_files) -> dict:
    """Which files the tiny workflows use: the embedded tiny model when shipped, else the random test weights."""
    if embedded_present():
        return {key: str(REPO / "imanim_core" / "weights" / folder / name) for name, (folder, key) in EMBEDDED.items()}
    return {key: model_files[key] for _, (_, key) in EMBEDDED.items()}


def node_of(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert ids, f"no {class_type} node in the prompt"
    return ids[0]


# the workflows run at 128x128 px and 20 steps (the tiny model's settings); the tests use 64x64 px and 4 steps
TEST_OVERRIDES = {"IMAnimationPuppetExample": {"width": 64, "height": 64},
                  "IMAnimationRetarget": {"width": 64, "height": 64}, "IMAnimationSampler": {"steps": 4}}


def workflow_prompt(server, model_files, name: str, tag: str) -> dict:
    wf = json.loads((REPO / "workflows" / name).read_text())
    p = ui_to_api(wf, server.object_info)
    for n in p.values():
        n["inputs"].update(TEST_OVERRIDES.get(n["class_type"], {}))
    if not embedded_present():
        sub = {wname: os.path.basename(model_files[key]) for wname, (_, key) in EMBEDDED.items()}
        for n in p.values():
            for k, v in n["inputs"].items():
                if isinstance(v, str) and v in sub:
                    n["inputs"][k] = sub[v]
    sampler = node_of(p, "IMAnimationSampler")
    frames = node_of(p, "ImageFromBatch")
    p["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/{tag}"}}
    p["901"] = {"class_type": "SaveImage", "inputs": {"images": [frames, 0], "filename_prefix": f"frames/{tag}"}}
    for n in p.values():  # unique output names per test run
        if n["class_type"] == "SaveVideo":
            n["inputs"]["filename_prefix"] = f"video/{tag}"
    return p


def assert_success(h: dict):
    errs = messages(h, "execution_error")
    assert h["status"]["status_str"] == "success", json.dumps(errs or h["status"])[:3000]


def saved_latent(server, h) -> torch.Tensor:
    from safetensors.torch import load_file

    info = h["outputs"]["900"]["latents"][0]
    return load_file(str(server.base / "output" / info["subfolder"] / info["filename"]))["latent_tensor"]


def saved_frames(server, h) -> np.ndarray:
    from PIL import Image

    imgs = h["outputs"]["901"]["images"]
    return np.stack([np.asarray(Image.open(server.base / "output" / i["subfolder"] / i["filename"]).convert("RGB"))
                     for i in imgs])


def save_video_of(prompt: dict, images_from: str) -> str:
    """The SaveVideo node whose CreateVideo takes its images from node ``images_from``."""
    for k, v in prompt.items():
        if v["class_type"] == "SaveVideo":
            src = prompt[v["inputs"]["video"][0]]
            if src["class_type"] == "CreateVideo" and src["inputs"]["images"][0] == images_from:
                return k
    raise AssertionError(f"no SaveVideo of the images of node {images_from}")


def saved_video_frames(server, h, prompt, node: str | None = None) -> np.ndarray:
    """Frames of the video saved by SaveVideo ``node`` (default: the one of the result, after ImageFromBatch)."""
    from imanim_core.io.video import read_video  # the project's one video reader (no PyAV in .venv)

    node = node or save_video_of(prompt, node_of(prompt, "ImageFromBatch"))
    vid = h["outputs"][node]["images"][0]
    return read_video(server.base / "output" / vid["subfolder"] / vid["filename"])[0]


def standalone(files: dict, prompt: dict, decode: bool) -> tuple:
    """The same animation through the standalone pipeline (imanim_core.pipeline: diffusers Wan, ComfyUI's noise,
    euler + simple sigmas, the same window planner). Returns (latent as a ComfyUI LATENT holds it, i.e. in raw
    VAE space, uint8 frames or None)."""
    from imanim_core import pipeline as P
    from imanim_core.backbone.latents import denormalize
    from imanim_core.data.puppet import sample_pair

    pz = prompt[node_of(prompt, "IMAnimationPuppetExample")]["inputs"]
    sp = prompt[node_of(prompt, "IMAnimationSampler")]["inputs"]
    rt = prompt[node_of(prompt, "IMAnimationRetarget")]["inputs"]
    fit, size = rt["fit"], (int(rt["height"]), int(rt["width"]))
    t = int(pz["frames"])
    pair = sample_pair(int(pz["seed"]), num_frames=t, fps=float(pz["fps"]), size=(int(pz["height"]), int(pz["width"])),
                       cross_identity=True, family=None if pz["motion"] == "any" else pz["motion"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server (see conftest.py); restored below
    try:
        return _standalone(P, denormalize, files, pair, size, t, sp, fit, decode)
    finally:
        torch.set_num_threads(threads)


def _standalone(P, denormalize, files, pair, size, t, sp, fit, decode):
    bundle, dit, vae = P.load_models(files["bundle"], files["dit"], files["vae"])
    kw = dict(steps=int(sp["steps"]), seed=int(sp["seed"]), shift=float(sp["shift"]), window=int(sp["window"]),
              overlap=int(sp["overlap"]))
    identity, driving = pair["identity"]["frames"][0], pair["driving"]["frames"]
    if decode:
        anim = P.run(identity, driving, bundle, dit, vae, size=size, progress=False, fit=fit, output="grid", **kw)
        return denormalize(anim.latent), anim.frames
    image, _ = P.prepare_identity(identity, size, fit)
    ref = P.encode_identity(vae, image)
    tokens = P.retarget(bundle, ref, P.encode_motion(bundle, driving))
    return denormalize(P.sample_latents(dit, bundle.injector, tokens, ref, t, **kw)), None


# --------------------------------------------------------------------------------------------------- tests
def test_object_info_lists_nodes_with_tooltips(server):
    oi = server.object_info
    for nid in NODE_IDS:
        assert nid in oi, f"{nid} missing from /object_info"
        info = oi[nid]
        assert info["category"] == "IM-Animation"
        assert info["description"].strip(), f"{nid} has no description"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{nid}.{name} has no tooltip"
    for custom in ("MOTION_TOKENS", "RETARGETED_MOTION", "IM_ANIMATION_MODELS"):
        assert any(custom in oi[n]["output"] for n in NODE_IDS), custom
    # the embedded-model folders are registered with the stock loaders' folders
    assert "imanim_test_dit.safetensors" in oi["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert "imanim_test_vae.safetensors" in oi["VAELoader"]["input"]["required"]["vae_name"][0]
    tmpl = server.get("/workflow_templates")
    assert {"tiny_puppet_demo", "long_video_windows", "wan21_1.3b"} <= set(tmpl.get("comfyui-im-animation", []))


def test_names_everywhere(server):
    """The frontend names the pack's nodes by their display names: locales/en/nodeDefs.json (served by /i18n)
    matches the schemas, and every node of every shipped workflow carries its display name (or a chosen title)."""
    oi = server.object_info
    want = {nid: {"display_name": oi[nid]["display_name"], "description": oi[nid]["description"]}
            for nid in oi if nid.startswith("IMAnimation")}
    assert set(NODE_IDS) <= set(want)
    local = json.loads((REPO / "locales" / "en" / "nodeDefs.json").read_text())
    assert local == want, "locales/en/nodeDefs.json is out of date (regenerate it from /object_info)"
    served = server.get("/i18n").get("en", {}).get("nodeDefs", {})
    assert {k: served.get(k) for k in want} == want
    for wf in sorted((REPO / "workflows").glob("*.json")):
        for n in json.loads(wf.read_text())["nodes"]:
            assert n.get("title"), f"{wf.name}: node {n['id']} ({n['type']}) has no title"
            if n["type"] in want:
                assert n["title"] == want[n["type"]]["display_name"], (wf.name, n["id"], n["title"])


@pytest.fixture(scope="module")
def demo_run(server, model_files):
    p = workflow_prompt(server, model_files, "tiny_puppet_demo.json", "demo")
    h, secs = server.run(p)
    return p, h, secs


def _check_video(server, model_files, p, h, secs, label, decode, latent_tol=LATENT_TOL):
    assert_success(h)
    t = int(p[node_of(p, "IMAnimationPuppetExample")]["inputs"]["frames"])
    rt = p[node_of(p, "IMAnimationRetarget")]["inputs"]
    hh, ww = int(rt["height"]), int(rt["width"])
    frames = saved_frames(server, h)
    assert frames.shape == (t, hh, ww, 3)
    assert frames.std() > 5 and np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 0.1, "blank / frozen"
    video = saved_video_frames(server, h, p)
    assert video.shape[0] == t
    lat = saved_latent(server, h)
    ref, ref_frames = standalone(weights(model_files), p, decode)
    diff = float((lat - ref).abs().max())
    msg = (f"\n{label}: {secs:.1f}s in ComfyUI, {t} frames {ww}x{hh}, latent {tuple(lat.shape)}, "
           f"max |ComfyUI - standalone| latent {diff:.2e} (scale {float(ref.abs().max()):.2f})")
    if ref_frames is not None:
        fd = np.abs(frames.astype(np.int16) - ref_frames.astype(np.int16))
        msg += f", frames max {int(fd.max())}/255 mean {fd.mean():.3f}"
    print(msg)
    assert lat.shape == ref.shape
    scale = max(1.0, float(ref.abs().max()))
    assert diff < latent_tol * scale, f"ComfyUI and the standalone pipeline's latents differ by {diff} (scale {scale})"
    if ref_frames is not None:  # ComfyUI's SaveImage truncates to uint8, the pipeline rounds: 1 level + VAE noise
        assert ref_frames.shape == frames.shape
        assert fd.max() <= FRAME_TOL, f"frames differ by up to {fd.max()} levels"


def test_tiny_puppet_demo_workflow(server, model_files, demo_run):
    p, h, secs = demo_run
    # windows of 9 frames overlapping by 4 (the tiny DiT's training length): 17 frames = 5 latent frames in 2 windows
    _check_video(server, model_files, p, h, secs, "tiny_puppet_demo", decode=True, latent_tol=LATENT_TOL_WINDOWED)
    text = h["outputs"][node_of(p, "IMAnimationSampler")]["text"][0]
    assert "2 window(s)" in text, text


def _stitched(prompt: dict, node: str) -> list:
    """The IMAGE sources [(node id, slot), ...] an ImageStitch chain ending at ``node`` puts side by side, left
    first."""
    n = prompt[node]
    first = tuple(n["inputs"]["image1"])
    left = _stitched(prompt, first[0]) if prompt[first[0]]["class_type"] == "ImageStitch" else [first]
    return left + [tuple(n["inputs"]["image2"])]


def test_tiny_puppet_demo_previews(server, demo_run):
    """The demo explains itself: identity | driving | ground truth | result as one saved, animated video, and the
    driving / retargeted poses as one animation, all stock nodes (ImageStitch -> CreateVideo -> SaveVideo)."""
    p, h, _ = demo_run
    assert_success(h)
    puppet, frames = node_of(p, "IMAnimationPuppetExample"), node_of(p, "ImageFromBatch")
    t, size = int(p[puppet]["inputs"]["frames"]), int(p[node_of(p, "IMAnimationRetarget")]["inputs"]["height"])
    ends = {}  # the last stitched part -> the chain's last ImageStitch
    for k, v in p.items():
        if v["class_type"] == "ImageStitch" and not any(
                w["class_type"] == "ImageStitch" and w["inputs"]["image1"][0] == k for w in p.values()):
            ends[_stitched(p, k)[-1]] = k
    side = ends[(frames, 0)]
    assert _stitched(p, side) == [(puppet, 0), (puppet, 1), (puppet, 2), (frames, 0)]  # identity|driving|truth|result
    video = saved_video_frames(server, h, p, save_video_of(p, side))
    sp = int(p[side]["inputs"]["spacing_width"])
    assert video.shape[0] == t and video.shape[1] == size and video.shape[2] == 4 * size + 3 * sp, video.shape
    for i in range(4):  # every panel has content, the driving and result panels move
        panel = video[:, :, i * (size + sp): i * (size + sp) + size].astype(np.float32)
        assert panel.std() > 5, f"panel {i} is blank"
        if i in (1, 3):
            assert np.abs(np.diff(panel, axis=0)).mean() > 0.1, f"panel {i} is frozen"
    poses = ends[(node_of(p, "IMAnimationRetarget"), 1)]
    pv = saved_video_frames(server, h, p, save_video_of(p, poses))
    assert pv.shape[0] == t and pv.std() > 2, (pv.shape, pv.std())


def test_status_reaches_stock_previews(server, demo_run):
    """What the nodes know is on the canvas without custom JavaScript: every shipped workflow wires the loader's info
    and the Encode / Retarget / Sampler status STRINGs to stock Preview as Text nodes; in the demo run they say
    what happened, seconds included."""
    for path in sorted((REPO / "workflows").glob("*.json")):
        name, wf = path.name, json.loads(path.read_text())
        ids = {n["id"]: n["type"] for n in wf["nodes"]}
        wired = {(ids[link[1]], link[2]) for link in wf["links"] if ids.get(link[3]) == "PreviewAny"}
        assert wired >= {("IMAnimationLoadModels", 1), ("IMAnimationEncodeMotion", 2), ("IMAnimationRetarget", 2),
                         ("IMAnimationSampler", 2)}, (name, wired)
    p, h, _ = demo_run
    assert_success(h)
    shown = {}
    for k, v in p.items():
        if v["class_type"] == "PreviewAny":
            shown[p[v["inputs"]["source"][0]]["class_type"]] = h["outputs"][k]["text"][0]
    t = int(p[node_of(p, "IMAnimationPuppetExample")]["inputs"]["frames"])
    size = p[node_of(p, "IMAnimationRetarget")]["inputs"]["width"]
    steps = p[node_of(p, "IMAnimationSampler")]["inputs"]["steps"]
    assert re.search(rf"^{t} frames -> motion tokens \({t}, 32\).* s$", shown["IMAnimationEncodeMotion"]), shown
    assert re.search(rf"^{t} frames retargeted to a {size}x{size} identity.*\d s", shown["IMAnimationRetarget"]), shown
    assert re.search(rf"^{t} frames \(motion padded to {t}\), 5 latent frames, 2 window\(s\): \[0,3\), \[2,5\); "
                     rf"{steps} steps in [\d.]+ s$", shown["IMAnimationSampler"]), shown
    assert "imanim_tiny.safetensors" in shown["IMAnimationLoadModels"], shown


def test_long_video_windows_workflow(server, model_files):
    p = workflow_prompt(server, model_files, "long_video_windows.json", "long")
    h, secs = server.run(p)
    _check_video(server, model_files, p, h, secs, "long_video_windows", decode=False, latent_tol=LATENT_TOL_WINDOWED)
    text = h["outputs"][node_of(p, "IMAnimationSampler")]["text"][0]
    assert "3 window(s)" in text, text  # 33 frames = 9 latent frames, windows [0,5) [3,8) [4,9)


def upstream_of(prompt: dict, node_id: str) -> dict:
    """The sub-prompt that ``node_id`` needs (itself and everything it links from)."""
    keep, todo = set(), [node_id]
    while todo:
        n = todo.pop()
        if n in keep:
            continue
        keep.add(n)
        todo += [v[0] for v in prompt[n]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {k: copy.deepcopy(v) for k, v in prompt.items() if k in keep}


def test_interrupt_mid_sampling_then_next_prompt_runs(server, demo_run):
    p0 = demo_run[0]
    sampler = node_of(p0, "IMAnimationSampler")
    p = upstream_of(p0, "900")  # puppet -> models -> encode -> retarget -> sampler -> SaveLatent
    p["900"]["inputs"]["filename_prefix"] = "latents/interrupt"
    p[sampler]["inputs"]["steps"] = 1
    assert_success(server.run(p)[0])  # caches everything upstream of the sampler
    p[sampler]["inputs"]["steps"] = 5000  # now only sampling runs
    pid = server.queue(p)
    t0 = time.time()
    while time.time() - t0 < 60:
        q = server.get("/queue")
        if any(item[1] == pid for item in q.get("queue_running", [])):
            break
        time.sleep(0.1)
    time.sleep(1.5)
    status, _ = server.post("/interrupt")
    assert status == 200
    h = server.wait(pid, timeout=120)
    assert time.time() - t0 < 100
    inter = messages(h, "execution_interrupted")
    assert inter, f"not interrupted: {json.dumps(h['status'])[:2000]}"
    assert inter[0]["node_id"] == sampler, inter
    # the next prompt runs normally
    p[sampler]["inputs"].update(seed=7, steps=2)
    assert_success(server.run(p)[0])


def test_retarget_default_size_follows_the_pipeline(server, demo_run):
    """width = height = 0: the standalone pipeline's default size (128x128 for a tiny model); one 0: aspect."""
    p0 = demo_run[0]
    rt = node_of(p0, "IMAnimationRetarget")
    for (w, h), want in (((0, 0), "128x128"), ((96, 0), "96x96")):
        p = upstream_of(p0, rt)
        p[rt]["inputs"].update(width=w, height=h)
        p["970"] = {"class_type": "PreviewImage", "inputs": {"images": [rt, 1]}}
        hist, _ = server.run(p)
        assert_success(hist)
        assert f"to a {want} identity" in hist["outputs"][rt]["text"][0], hist["outputs"][rt]


BAD_CASES = {
    # a Wan MODEL of another width than the bundle's injector (stands in for "not the right Wan model")
    "model_width": ("IMAnimationSampler", "model:", lambda p, mf: p[node_of(p, "UNETLoader")]["inputs"].update(
        unet_name=os.path.basename(mf["dit_w128"]))),
    # a VAE of another kind (TAESD, 4 latent channels)
    "vae_kind": ("IMAnimationRetarget", "vae:", lambda p, mf: p.update({"950": {
        "class_type": "VAELoader", "inputs": {"vae_name": os.path.basename(mf["taesd"])}}}) or
        p[node_of(p, "IMAnimationRetarget")]["inputs"].update(vae=["950", 0])),
    # identity frames smaller than one 16 px grid cell
    "tiny_identity": ("IMAnimationRetarget", "identity:", lambda p, mf: p.update({"951": {
        "class_type": "ImageScale", "inputs": {"image": [node_of(p, "IMAnimationPuppetExample"), 0],
                                               "upscale_method": "nearest-exact", "width": 8, "height": 8,
                                               "crop": "disabled"}}}) or
        p[node_of(p, "IMAnimationRetarget")]["inputs"].update(identity=["951", 0])),
    # motion tokens from one bundle, retargeter of a bundle with another tokenizer config
    "other_bundle": ("IMAnimationRetarget", "motion_tokens:", lambda p, mf: p.update({"952": {
        "class_type": "IMAnimationLoadModels", "inputs": {"bundle": os.path.basename(mf["bundle_othertok"]),
                                                          "dtype": "auto", "device": "auto"}}}) or
        p[node_of(p, "IMAnimationRetarget")]["inputs"].update(models=["952", 0])),
    # an encoder-only bundle (like the released motion encoder) cannot retarget
    "encoder_only": ("IMAnimationRetarget", "models:", lambda p, mf: p.update({"953": {
        "class_type": "IMAnimationLoadModels", "inputs": {"bundle": os.path.basename(mf["tokenizer_only"]),
                                                          "dtype": "auto", "device": "auto"}}}) or
        p[node_of(p, "IMAnimationRetarget")]["inputs"].update(models=["953", 0]) or
        p[node_of(p, "IMAnimationEncodeMotion")]["inputs"].update(models=["953", 0])),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_are_node_errors(server, model_files, demo_run, case):
    node_type, needle, edit = BAD_CASES[case]
    p = copy.deepcopy(demo_run[0])
    edit(p, model_files)
    h, _ = server.run(p)
    errs = messages(h, "execution_error")
    assert h["status"]["status_str"] == "error" and errs, json.dumps(h["status"])[:2000]
    e = errs[0]
    assert e["node_type"] == node_type, e
    assert needle in e["exception_message"], e["exception_message"]
    assert "Error" in e["exception_type"], e["exception_type"]
    assert server.alive(), "the server stopped serving"
    if case == "encoder_only":  # encoding itself works, with a preview that says there is no pose decoder
        text = h["outputs"][node_of(p, "IMAnimationEncodeMotion")]["text"][0]
        assert "no motion decoder" in text, text


def test_save_and_load_motion_tokens(server, demo_run):
    p0 = demo_run[0]
    enc = node_of(p0, "IMAnimationEncodeMotion")
    p = {k: v for k, v in copy.deepcopy(p0).items() if k in (enc, node_of(p0, "IMAnimationPuppetExample"),
                                                               node_of(p0, "IMAnimationLoadModels"))}
    p["960"] = {"class_type": "IMAnimationSaveMotionTokens",
                "inputs": {"motion_tokens": [enc, 0], "filename_prefix": "im_animation_motion/test"}}
    h, _ = server.run(p)
    assert_success(h)
    saved = list((server.base / "output" / "im_animation_motion").glob("test_*.safetensors"))
    assert len(saved) == 1
    server._object_info = None  # the Load node's file list changes
    opts = server.object_info["IMAnimationLoadMotionTokens"]["input"]["required"]["file"][1]["options"]
    assert saved[0].name in opts
    h2, _ = server.run({"1": {"class_type": "IMAnimationLoadMotionTokens", "inputs": {"file": saved[0].name}},
                        "2": {"class_type": "IMAnimationSaveMotionTokens",
                              "inputs": {"motion_tokens": ["1", 0], "filename_prefix": "im_animation_motion/again"}}})
    assert_success(h2)
    assert h2["outputs"]["1"]["text"][0].endswith(": 17 frames")


def test_wan21_workflow_only_misses_model_files(server):
    wf = json.loads((REPO / "workflows" / "wan21_1.3b.json").read_text())
    p = ui_to_api(wf, server.object_info)
    status, body = server.post("/prompt", {"prompt": p})
    assert status == 400, body
    errors = body.get("node_errors", {})
    assert errors, body
    allowed = {"LoadImage", "LoadVideo", "IMAnimationLoadModels", "UNETLoader", "CLIPLoader", "VAELoader"}
    for ne in errors.values():
        assert ne["class_type"] in allowed, ne
        for e in ne["errors"]:
            assert e["type"] in ("value_not_in_list", "custom_validation_failed"), e


def test_denoiser_parity_with_diffusers(comfyui_path, model_files):
    """ComfyUI MODEL + the sampler's patch vs imanim_core.backbone.flow.denoise_once, same weights, fp32."""
    r = subprocess.run([comfy_python(), str(HERE / "parity_check.py"), str(comfyui_path), model_files["dit"],
                        model_files["bundle"]], capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("\nparity:", res)
    assert res["motion_effect"] > 1e-2, res  # the motion really changes the output
    assert res["single"] < 1e-5 and res["windowed"] < 1e-5, res
    assert res["windowed_windows"] == 2


@pytest.mark.parametrize("which", ["random_fp32", "embedded"])
def test_tiny_vae_parity_with_comfyui_stock_loader(comfyui_path, model_files, which):
    """The tiny VAE's layout (TAEHV): ComfyUI's stock VAE and imanim_core's TinyVideoVAE agree, for a float32 file
    and for the embedded one (float16 but for decoder.1.weight, which keeps ComfyUI off HunyuanVideo's scaling)."""
    path = model_files["vae"] if which == "random_fp32" else str(REPO / "imanim_core" / "weights" / "vae" /
                                                                 "imanim_tiny_vae.safetensors")
    r = subprocess.run([comfy_python(), str(HERE / "vae_parity_check.py"), str(comfyui_path), path],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print("\nvae parity:", res)
    assert res["kind"] == "TAEHV" and res["latent_format"] is None, res  # fp32: no HunyuanVideo scaling
    assert res["latent_shape"] == [1, 16, 3, 8, 8] and res["frames"] == 9, res
    assert res["encode"] < 1e-4 * max(1.0, res["scale"]) and res["decode"] < 1e-3, res


NODE_ROWS = ["node-driving-nan", "node-identity-nan", "node-codes-nan", "node-bundle-nan", "node-vae-nan",
             "node-dit-nan", "node-dit-image-to-video", "node-identity-too-small"]


def test_node_bad_inputs_match_the_cli(comfyui_path, model_files, tmp_path):
    """The nodes called directly (no server) on the bad inputs of tests/bad_inputs_table.py: NaN / Inf anywhere
    (the DiT and VAE through ComfyUI's stock loaders), an image-to-video DiT, an identity under 16 px: an error
    with the CLI's words; an RGBA identity: the CLI's compositing (over black)."""
    sys.path.insert(0, str(REPO / "tests"))
    from bad_inputs_table import message

    r = subprocess.run([comfy_python(), str(HERE / "node_input_check.py"), str(comfyui_path), model_files["dit"],
                        model_files["vae"], model_files["bundle"], str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["good-sampling"]["error"] is None, res["good-sampling"]
    for row in NODE_ROWS:
        err = res[row]["error"]
        assert err is not None and message(row) in err, (row, res[row])
        assert res[row]["type"] in ("InputError", "CheckpointError"), (row, res[row])
    rgba = res["node-rgba-identity"]
    assert rgba["error"] is None, rgba
    assert rgba["max_diff"] <= 1 / 255 + 1e-6 < rgba["max_diff_alpha_dropped"], ("node-rgba-identity", rgba)
