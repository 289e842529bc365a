"""Write workflows/*.json (UI format) from compact graph descriptions and a running server's /object_info.

Usage: python build_workflows.py OBJECT_INFO.json [OUT_DIR]      (OUT_DIR defaults to the repo's workflows/)

A developer tool: the workflow files are committed; tests/comfyui converts them back to API format and runs
them. Slots, types and widget order all come from /object_info, so the files match what the page would save.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workflow_api import _all_inputs, has_control, is_widget  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_DIT = "imanim_tiny_dit.safetensors"
TINY_VAE = "imanim_tiny_vae.safetensors"
TINY_BUNDLE = "imanim_tiny.safetensors"
NOTE_TYPES = ("Note", "MarkdownNote")  # frontend-only nodes (tests/comfyui/workflow_api.py drops them)
GROUP_PAD, GROUP_TITLE, NODE_TITLE = 20, 40, 30  # group box geometry around its nodes (px)
HF_WAN = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"

FRAME_NOTE = ("Frame counts: Wan's VAE turns L latent frames into 4L-3 frames. The sampler pads the motion to the "
              "next 4n+1 frames and outputs frame_count = the driving video's frame count; ImageFromBatch "
              "(batch_index 0, length = frame_count) after VAE Decode gives exactly that many frames.")


def _default(spec):
    t = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    if isinstance(t, list):
        return t[0] if t else ""
    if t == "COMBO":
        o = opts.get("options") or [""]
        return o[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(t, None)


def build(nodes: list, object_info: dict, wid: str, groups: list = ()) -> dict:
    """nodes: dicts with id, type, pos, size (optional), widgets {name: value}, links {input: (src_id, slot)},
    title (optional), models (optional: [{name, url, directory}] for the missing-models dialog); types 'Note' and
    'MarkdownNote' take 'text'. groups: (title, [node ids], colour) — each group's box is drawn around its nodes."""
    by_id = {n["id"]: n for n in nodes}
    out_nodes, links = {}, []
    for n in nodes:
        if n["type"] in NOTE_TYPES:
            out_nodes[n["id"]] = {"id": n["id"], "type": n["type"], "pos": n["pos"],
                                  "size": n.get("size", [420, 240]), "flags": {}, "order": 0, "mode": 0,
                                  "inputs": [], "outputs": [], "properties": {}, "widgets_values": [n["text"]],
                                  "color": "#432", "bgcolor": "#653", "title": n.get("title", "Note")}
            continue
        info = object_info[n["type"]]
        want = n.get("links", {})
        inputs, values = [], []
        for name, spec in _all_inputs(info):
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            t = spec[0]
            tname = "COMBO" if isinstance(t, list) else t
            if is_widget(spec):
                v = n.get("widgets", {}).get(name, _default(spec))
                values.append(v)
                if has_control(name, spec):
                    values.append(n.get("control", "fixed"))
                if opts.get("image_upload"):
                    values.append("image")
                if name in want:
                    inputs.append({"name": name, "type": tname, "widget": {"name": name}, "link": None})
            else:
                entry = {"name": name, "type": tname, "link": None}
                if name in info["input"].get("optional", {}):
                    entry["shape"] = 7
                inputs.append(entry)
        unknown = set(want) - {i["name"] for i in inputs}
        if unknown:
            raise ValueError(f"node {n['id']} ({n['type']}): unknown linked inputs {sorted(unknown)}")
        outputs = [{"name": info["output_name"][i], "type": info["output"][i], "links": [], "slot_index": i}
                   for i in range(len(info["output"]))]
        node = {"id": n["id"], "type": n["type"], "pos": n["pos"], "size": n.get("size", [320, 160]),
                "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n["type"]}, "widgets_values": values}
        # every node carries its title (the display name unless given), so the progress panel, the queue and
        # error dialogs name it as the user sees it, never by its type id
        node["title"] = n.get("title") or info.get("display_name") or n["type"]
        if n.get("models"):  # stock loaders: ComfyUI's missing-models dialog offers these downloads
            node["properties"]["models"] = n["models"]
        out_nodes[n["id"]] = node
    lid = 0
    for n in nodes:
        for name, (src, slot) in n.get("links", {}).items():
            lid += 1
            dst = out_nodes[n["id"]]
            dslot = next(i for i, inp in enumerate(dst["inputs"]) if inp["name"] == name)
            so = out_nodes[src]["outputs"][slot]
            links.append([lid, src, slot, n["id"], dslot, so["type"]])
            dst["inputs"][dslot]["link"] = lid
            so["links"].append(lid)
    # execution order (topological) for the 'order' field
    done, order = set(), []

    def visit(i):
        if i in done:
            return
        for src, _ in by_id[i].get("links", {}).values():
            visit(src)
        done.add(i)
        order.append(i)

    for n in nodes:
        visit(n["id"])
    for k, i in enumerate(order):
        out_nodes[i]["order"] = k
    out_groups = []
    for gi, (title, ids, color) in enumerate(groups, 1):
        boxes = [(out_nodes[i]["pos"][0], out_nodes[i]["pos"][1], out_nodes[i]["size"][0], out_nodes[i]["size"][1])
                 for i in ids]
        x0 = min(b[0] for b in boxes) - GROUP_PAD
        y0 = min(b[1] for b in boxes) - GROUP_PAD - GROUP_TITLE - NODE_TITLE
        x1 = max(b[0] + b[2] for b in boxes) + GROUP_PAD
        y1 = max(b[1] + b[3] for b in boxes) + GROUP_PAD
        out_groups.append({"id": gi, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": color,
                           "font_size": 24, "flags": {}})
    # the saved view starts right of the sidebar (about 50 px wide) with the top-left group's title in sight
    return {"id": wid, "revision": 0, "last_node_id": max(out_nodes), "last_link_id": lid,
            "nodes": [out_nodes[n["id"]] for n in nodes], "links": links, "groups": out_groups, "config": {},
            "extra": {"ds": {"scale": 0.6, "offset": [140, 275]}}, "version": 0.4}


def stitched_video(first_id: int, parts: list, fps: tuple, x: int, y: int, prefix: str, title: str,
                   save_pos: list, save_size: list) -> list:
    """Stock nodes only: ImageStitch the IMAGE batches ``parts`` left to right (a single image is repeated over the
    frames), CreateVideo at ``fps``, SaveVideo (an animated preview on the node and a saved file)."""
    nodes, prev = [], parts[0]
    for k, part in enumerate(parts[1:]):
        nid = first_id + k
        nodes.append({"id": nid, "type": "ImageStitch", "pos": [x, y + 170 * k], "size": [300, 130],
                      "widgets": {"direction": "right", "match_image_size": True, "spacing_width": 4,
                                  "spacing_color": "black"},
                      "links": {"image1": prev, "image2": part}})
        prev = (nid, 0)
    vid = first_id + len(parts) - 1
    nodes.append({"id": vid, "type": "CreateVideo", "pos": [x, y + 170 * (len(parts) - 1)], "size": [300, 80],
                  "widgets": {"fps": 16.0}, "links": {"images": prev, "fps": fps}})
    nodes.append({"id": vid + 1, "type": "SaveVideo", "pos": save_pos, "size": save_size, "title": title,
                  "widgets": {"filename_prefix": prefix, "format": "auto", "codec": "auto"},
                  "links": {"video": (vid, 0)}})
    return nodes


def status_nodes(first_id: int, sources: list, x: int, y: int) -> list:
    """Stock *Preview as Text* (PreviewAny) nodes showing the pack's info/status STRING outputs on the canvas.
    sources: (title, (node id, output slot))."""
    return [{"id": first_id + k, "type": "PreviewAny", "pos": [x, y + 190 * k], "size": [360, 150], "title": title,
             "links": {"source": src}} for k, (title, src) in enumerate(sources)]


def tiny_graph(frames: int, window: int, overlap: int, steps: int, prefix: str, note: str) -> tuple:
    nodes = [
        {"id": 1, "type": "IMAnimationPuppetExample", "pos": [0, 0], "size": [320, 290],
         "widgets": {"seed": 3, "frames": frames, "width": 128, "height": 128, "motion": "any", "fps": 16.0}},
        {"id": 2, "type": "IMAnimationLoadModels", "pos": [0, 360], "size": [320, 130],
         "widgets": {"bundle": TINY_BUNDLE, "dtype": "auto", "device": "auto"}},
        {"id": 3, "type": "UNETLoader", "pos": [0, 540], "size": [320, 90],
         "widgets": {"unet_name": TINY_DIT, "weight_dtype": "default"}},
        {"id": 4, "type": "VAELoader", "pos": [0, 680], "size": [320, 60], "widgets": {"vae_name": TINY_VAE}},
        {"id": 5, "type": "IMAnimationEncodeMotion", "pos": [420, 0], "size": [300, 100],
         "widgets": {"batch_size": 8}, "links": {"models": (2, 0), "driving": (1, 1)}},
        {"id": 6, "type": "IMAnimationRetarget", "pos": [420, 160], "size": [300, 250],
         "widgets": {"width": 128, "height": 128, "fit": "pad", "frame_chunk": 16},
         "links": {"models": (2, 0), "identity": (1, 0), "vae": (4, 0), "motion_tokens": (5, 0)}},
        {"id": 7, "type": "IMAnimationSampler", "pos": [780, 0], "size": [320, 380],
         "widgets": {"seed": 0, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                     "shift": 5.0, "denoise": 1.0, "window": window, "overlap": overlap},
         "links": {"model": (3, 0), "retargeted_motion": (6, 0)}},
        {"id": 8, "type": "VAEDecode", "pos": [1180, 0], "size": [210, 50], "links": {"samples": (7, 0), "vae": (4, 0)}},
        {"id": 9, "type": "ImageFromBatch", "pos": [1180, 110], "size": [260, 100], "title": "Image From Batch",
         "widgets": {"batch_index": 0, "length": frames}, "links": {"image": (8, 0), "length": (7, 1)}},
        {"id": 10, "type": "CreateVideo", "pos": [1180, 270], "size": [260, 80],
         "widgets": {"fps": 16.0}, "links": {"images": (9, 0), "fps": (1, 3)}},
        {"id": 11, "type": "SaveVideo", "pos": [1500, 0], "size": [300, 360], "title": "Result",
         "widgets": {"filename_prefix": prefix, "format": "auto", "codec": "auto"}, "links": {"video": (10, 0)}},
        {"id": 14, "type": "MarkdownNote", "pos": [0, 820], "size": [340, 560], "title": "About this workflow",
         "text": note},
    ]
    # identity | driving | ground truth | result, one animation (ids 15-19)
    nodes += stitched_video(15, [(1, 0), (1, 1), (1, 2), (9, 0)], (1, 3), 780, 560,
                            f"{prefix}_side_by_side", "identity | driving | ground truth | result",
                            [1180, 560], [620, 300])
    # driving pose | retargeted pose, one animation (ids 20-22)
    nodes += stitched_video(20, [(5, 1), (6, 1)], (1, 3), 420, 560, f"{prefix}_poses",
                            "driving pose | retargeted pose", [420, 880], [300, 260])
    # what each step did (ids 23-26)
    nodes += status_nodes(23, [("Loaded models", (2, 1)), ("Encode status", (5, 2)), ("Retarget status", (6, 2)),
                               ("Sampler status", (7, 2))], 1860, 0)
    groups = [("Inputs and models", [1, 2, 3, 4], "#3f789e"),
              ("IM-Animation", [5, 6, 7], "#8A8"),
              ("Decode and save", [8, 9, 10, 11], "#b58b2a"),
              ("Previews", [15, 16, 17, 18, 19, 20, 21, 22], "#a1309b"),
              ("Status", [23, 24, 25, 26], "#444")]
    return nodes, groups


def tiny_note(title: str, extra: str) -> str:
    return (f"## {title}\n\n{extra}\n\n"
            f"**Runs on a CPU with no download**: the embedded tiny IM-Animation model (trained on the puppet "
            f"world) is listed in the stock loaders:\n\n- *Load Diffusion Model*: `{TINY_DIT}`\n"
            f"- *Load VAE*: `{TINY_VAE}`\n- *Load IM-Animation Models*: `{TINY_BUNDLE}`\n\n"
            f"The *Puppet Example* gives a character and a driving video of a different body; its `ground_truth` "
            f"output is the exact target. **Previews**: *identity | driving | ground truth | result* and *driving "
            f"pose | retargeted pose* (the poses the tokens decode to, before and after retargeting), as "
            f"animations. **Status** (right): what each node loaded and did (frames, padding, windows, "
            f"seconds). The tiny model works at 128x128, 16 fps (as trained); the same settings in "
            f"`python -m imanim_core animate` give the same video.\n\n{FRAME_NOTE}")


def wan_graph() -> tuple:
    neg = ("bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality, JPEG "
           "artifacts, ugly, deformed, extra fingers, poorly drawn hands, poorly drawn face, fused fingers, "
           "messy background, three legs, walking backwards")
    note = (
        "## Needs an IM-Animation bundle you trained for Wan 2.1 1.3B\n\n"
        "This workflow needs **an IM-Animation bundle trained with the stage scripts** (`python -m imanim_core "
        "train stage1|stage2|stage3`, see the README's *Training* section: README.md#training); no such bundle is "
        "published. The authors' released `motion_encoder_latest.safetensors` only encodes motion tokens.\n\n"
        "**Model files** (the stock loaders' missing-models dialog offers the Wan downloads; this workflow "
        "downloads nothing itself):\n\n"
        "- `models/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors` (Wan 2.1 T2V 1.3B, "
        "Comfy-Org/Wan_2.1_ComfyUI_repackaged)\n"
        "- `models/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors` (umT5-XXL)\n"
        "- `models/vae/wan_2.1_vae.safetensors` (Wan 2.1 VAE)\n"
        "- `models/im_animation/im_animation_wan2.1_t2v_1.3b.safetensors` (your bundle; its injector must be "
        "1536 wide)\n"
        "- `input/character.png` (your character) and `input/dance.mp4` (the driving video, ideally 16 fps).\n\n"
        "Output: 832x480. Long driving videos are sampled as overlapping windows of 81 frames. "
        + FRAME_NOTE)
    nodes = [
        {"id": 1, "type": "LoadImage", "pos": [0, 0], "size": [320, 320], "title": "Character (identity)",
         "widgets": {"image": "character.png"}},
        {"id": 2, "type": "LoadVideo", "pos": [0, 390], "size": [320, 320], "title": "Driving video",
         "widgets": {"file": "dance.mp4"}},
        {"id": 3, "type": "GetVideoComponents", "pos": [0, 760], "size": [320, 80], "links": {"video": (2, 0)}},
        {"id": 4, "type": "IMAnimationLoadModels", "pos": [420, 0], "size": [340, 130],
         "widgets": {"bundle": "im_animation_wan2.1_t2v_1.3b.safetensors", "dtype": "auto", "device": "auto"}},
        {"id": 5, "type": "UNETLoader", "pos": [420, 190], "size": [340, 90],
         "widgets": {"unet_name": "wan2.1_t2v_1.3B_fp16.safetensors", "weight_dtype": "default"},
         "models": [{"name": "wan2.1_t2v_1.3B_fp16.safetensors", "directory": "diffusion_models",
                     "url": f"{HF_WAN}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors"}]},
        {"id": 6, "type": "CLIPLoader", "pos": [420, 340], "size": [340, 110],
         "widgets": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan", "device": "default"},
         "models": [{"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders",
                     "url": f"{HF_WAN}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"}]},
        {"id": 7, "type": "CLIPTextEncode", "pos": [420, 510], "size": [340, 140], "title": "Positive",
         "widgets": {"text": "a character dancing, smooth natural motion, high quality"}, "links": {"clip": (6, 0)}},
        {"id": 8, "type": "CLIPTextEncode", "pos": [420, 710], "size": [340, 140], "title": "Negative",
         "widgets": {"text": neg}, "links": {"clip": (6, 0)}},
        {"id": 9, "type": "VAELoader", "pos": [420, 910], "size": [340, 60],
         "widgets": {"vae_name": "wan_2.1_vae.safetensors"},
         "models": [{"name": "wan_2.1_vae.safetensors", "directory": "vae",
                     "url": f"{HF_WAN}/vae/wan_2.1_vae.safetensors"}]},
        {"id": 10, "type": "IMAnimationEncodeMotion", "pos": [840, 0], "size": [300, 100],
         "widgets": {"batch_size": 8}, "links": {"models": (4, 0), "driving": (3, 0)}},
        {"id": 11, "type": "IMAnimationRetarget", "pos": [840, 160], "size": [300, 250],
         "widgets": {"width": 832, "height": 480, "fit": "pad", "frame_chunk": 8},
         "links": {"models": (4, 0), "identity": (1, 0), "vae": (9, 0), "motion_tokens": (10, 0)}},
        {"id": 12, "type": "IMAnimationSampler", "pos": [1200, 0], "size": [320, 420],
         "widgets": {"seed": 0, "steps": 30, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple",
                     "shift": 5.0, "denoise": 1.0, "window": 81, "overlap": 16},
         "links": {"model": (5, 0), "retargeted_motion": (11, 0), "positive": (7, 0), "negative": (8, 0)}},
        {"id": 13, "type": "VAEDecode", "pos": [1600, 0], "size": [210, 50], "links": {"samples": (12, 0), "vae": (9, 0)}},
        {"id": 14, "type": "ImageFromBatch", "pos": [1600, 110], "size": [260, 100], "title": "Image From Batch",
         "widgets": {"batch_index": 0, "length": 81}, "links": {"image": (13, 0), "length": (12, 1)}},
        {"id": 15, "type": "CreateVideo", "pos": [1600, 270], "size": [260, 80],
         "widgets": {"fps": 16.0}, "links": {"images": (14, 0), "fps": (3, 2)}},
        {"id": 16, "type": "SaveVideo", "pos": [1920, 0], "size": [400, 400], "title": "Result",
         "widgets": {"filename_prefix": "im_animation/wan21_1.3b", "format": "auto", "codec": "auto"},
         "links": {"video": (15, 0)}},
        {"id": 19, "type": "MarkdownNote", "pos": [0, 900], "size": [340, 620],
         "title": "Needs an IM-Animation bundle you trained (stage scripts)", "text": note},
    ]
    # identity | driving | result (ids 20-23), driving pose | retargeted pose (ids 24-26)
    nodes += stitched_video(20, [(1, 0), (3, 0), (14, 0)], (3, 2), 1200, 560, "im_animation/wan21_1.3b_side_by_side",
                            "identity | driving | result", [1600, 560], [700, 300])
    nodes += stitched_video(24, [(10, 1), (11, 1)], (3, 2), 840, 560, "im_animation/wan21_1.3b_poses",
                            "driving pose | retargeted pose", [840, 880], [300, 260])
    nodes += status_nodes(27, [("Loaded models", (4, 1)), ("Encode status", (10, 2)), ("Retarget status", (11, 2)),
                               ("Sampler status", (12, 2))], 2380, 0)
    groups = [("Inputs", [1, 2, 3], "#3f789e"),
              ("Models and prompts", [4, 5, 6, 7, 8, 9], "#3f789e"),
              ("IM-Animation", [10, 11, 12], "#8A8"),
              ("Decode and save", [13, 14, 15, 16], "#b58b2a"),
              ("Previews", [20, 21, 22, 23, 24, 25, 26], "#a1309b"),
              ("Status", [27, 28, 29, 30], "#444")]
    return nodes, groups


WORKFLOWS = {
    "tiny_puppet_demo.json": lambda: tiny_graph(  # windows of 9 (overlap 4): the tiny DiT's training length
        17, 9, 4, 20, "im_animation/tiny_puppet_demo",
        tiny_note("Tiny puppet demo", "The character from the Puppet Example re-enacts the driver's motion.")),
    "long_video_windows.json": lambda: tiny_graph(
        33, 17, 8, 20, "im_animation/long_video_windows",
        tiny_note("Long video in windows",
                  "33 frames (9 latent frames) sampled as 3 overlapping windows of 17 frames (5 latent "
                  "frames) sharing at least 8 frames (2 latent frames; the last window is aligned to the end), "
                  "blended at every step. For Wan 2.1 use window 81 and overlap 16.")),
    "wan21_1.3b.json": wan_graph,
}


def main():
    oi = json.load(open(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(REPO, "workflows")
    os.makedirs(out, exist_ok=True)
    for i, (name, make) in enumerate(sorted(WORKFLOWS.items())):
        nodes, groups = make()
        wf = build(nodes, oi, f"1a2b3c4d-0000-4000-8000-00000000000{i}", groups)
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            json.dump(wf, f, indent=1)
            f.write("\n")
        print("wrote", os.path.join(out, name))


if __name__ == "__main__":
    main()
