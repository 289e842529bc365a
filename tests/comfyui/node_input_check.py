"""Run with ComfyUI's Python: the nodes' answers to bad inputs, called directly (no server). Prints one JSON line
``{case: {"error": message or None, ...}}`` for tests/comfyui/test_nodes.py::test_node_bad_inputs_match_the_cli.

    python node_input_check.py COMFYUI_DIR DIT_FILE VAE_FILE BUNDLE_FILE WORK_DIR

The cases are rows of tests/bad_inputs_table.py (docs/BAD_INPUTS.md): NaN / Inf in the driving frames, the
identity, the motion-token codes, the bundle, the VAE and the DiT (the last two loaded with ComfyUI's stock
loaders, as in a workflow); an image-to-video Wan DiT; an RGBA identity (compared with the CLI's reading of the
same PNG); an identity under 16 px. WORK_DIR receives the damaged copies of the model files.
"""
import importlib.util
import json
import os
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
GRID = 32  # px: the smallest useful grid, so that sampling one step takes no time


def main():
    comfy_dir, dit_path, vae_path, bundle_path, work = sys.argv[1:6]
    sys.path.insert(0, HERE)
    from launch import declare_torchvision_ops

    declare_torchvision_ops()
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import numpy as np
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    import comfy.sd
    import comfy.utils
    import folder_paths

    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("imanim_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["imanim_pack"] = pack
    spec.loader.exec_module(pack)
    from imanim_pack.nodes.common import check_image
    from imanim_pack.nodes.loader import IMAnimationLoadModels
    from imanim_pack.nodes.motion import IMAnimationEncodeMotion
    from imanim_pack.nodes.paths import MODELS_KEY, register_model_folders
    from imanim_pack.nodes.retarget import IMAnimationRetarget
    from imanim_pack.nodes.sampler import IMAnimationSampler

    from imanim_core.backbone import wan
    from imanim_core.io.video import read_image

    os.makedirs(work, exist_ok=True)

    def damaged(src, dst, pick, value=float("nan")):
        with safe_open(src, "pt") as f:
            meta = f.metadata()
        sd = load_file(src)
        k = pick(sd)
        sd[k] = torch.full_like(sd[k], value)
        save_file(sd, dst, metadata=meta)
        return dst

    nan_bundle = damaged(bundle_path, os.path.join(work, "nan_bundle.safetensors"),
                         lambda sd: sorted(k for k in sd if k.startswith("tokenizer."))[0])
    nan_vae = damaged(vae_path, os.path.join(work, "nan_vae.safetensors"),
                      lambda sd: sorted(k for k in sd if k.startswith("encoder.") and k.endswith("weight"))[0])
    nan_dit = damaged(dit_path, os.path.join(work, "nan_dit.safetensors"), lambda sd: "head.head.weight")
    cfg = wan.dit_config("tiny")
    cfg.update(num_layers=1, ffn_dim=1024, in_channels=36)
    torch.manual_seed(0)
    i2v_dit = os.path.join(work, "i2v_dit.safetensors")
    wan.save_dit(wan.build_dit(cfg), i2v_dit)

    register_model_folders()
    folder_paths.add_model_folder_path(MODELS_KEY, os.path.dirname(bundle_path))
    folder_paths.add_model_folder_path(MODELS_KEY, work)

    def attempt(fn):
        try:
            return {"error": None, "value": fn()}
        except Exception as e:  # noqa: BLE001 - report what the node raised
            return {"error": str(e), "type": type(e).__name__, "traceback": traceback.format_exc()[-1500:]}

    def out(res):
        return res.result if hasattr(res, "result") else res

    out_ = {}
    models = out(IMAnimationLoadModels.execute(os.path.basename(bundle_path), "fp32", "cpu"))[0]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae_path))
    g = torch.Generator().manual_seed(0)
    driving = torch.rand(5, GRID, GRID, 3, generator=g)
    identity = torch.rand(1, GRID, GRID, 3, generator=g)
    motion = out(IMAnimationEncodeMotion.execute(models, driving, 4))[0]

    def retarget(ident=identity, mot=motion, v=vae):
        return out(IMAnimationRetarget.execute(models, ident, v, mot, GRID, GRID, "pad", 16))[0]

    def sample(model_path, r):
        model = comfy.sd.load_diffusion_model(model_path)
        lat = out(IMAnimationSampler.execute(model, r, 0, 1, 1.0, "euler", "simple", 5.0, 1.0, 81, 16))[0]
        return float(lat["samples"].abs().max())

    bad = driving.clone()
    bad[2, 3, 3, 0] = float("nan")
    out_["node-driving-nan"] = attempt(lambda: out(IMAnimationEncodeMotion.execute(models, bad, 4))[0])
    bad = identity.clone()
    bad[0, 1, 1, 2] = float("inf")
    out_["node-identity-nan"] = attempt(lambda: retarget(ident=bad))
    codes = motion["codes"].clone()
    codes[1, 0, 0] = float("nan")
    out_["node-codes-nan"] = attempt(lambda: retarget(mot=dict(motion, codes=codes)))
    out_["node-bundle-nan"] = attempt(
        lambda: out(IMAnimationLoadModels.execute(os.path.basename(nan_bundle), "fp32", "cpu")))
    out_["node-vae-nan"] = attempt(lambda: retarget(v=comfy.sd.VAE(sd=comfy.utils.load_torch_file(nan_vae))))
    good = retarget()
    out_["good-sampling"] = attempt(lambda: sample(dit_path, good))  # the same path with sound weights works
    out_["node-dit-nan"] = attempt(lambda: sample(nan_dit, good))
    out_["node-dit-image-to-video"] = attempt(lambda: sample(i2v_dit, good))
    small = torch.rand(1, 12, 40, 3, generator=g)
    out_["node-identity-too-small"] = attempt(lambda: retarget(ident=small))

    # RGBA: the node's conversion of an RGBA IMAGE vs the CLI's reading of the same RGBA PNG
    import cv2

    rgba = np.random.default_rng(0).integers(0, 256, (40, 32, 4), dtype=np.uint8)
    rgba[..., 3] = np.linspace(0, 255, 32).astype(np.uint8)[None, :]
    png = os.path.join(work, "rgba.png")
    cv2.imwrite(png, cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    image = torch.from_numpy(rgba).float()[None] / 255.0  # what a 4-channel IMAGE holds
    node_rgb = check_image(image, "identity")[0].numpy()
    cli_rgb = read_image(png).astype(np.float32) / 255.0
    res = attempt(lambda: tuple(retarget(ident=image).tokens.shape))
    res["max_diff"] = float(np.abs(node_rgb - cli_rgb).max())
    res["max_diff_alpha_dropped"] = float(np.abs(rgba[..., :3] / 255.0 - cli_rgb).max())
    out_["node-rgba-identity"] = res
    print(json.dumps(out_, default=str))


if __name__ == "__main__":
    main()
