"""Denoiser parity: ComfyUI's Wan MODEL patched by the IM-Animation Sampler vs imanim_core's diffusers path.

Usage (ComfyUI's Python): python parity_check.py COMFYUI_DIR DIT_FILE BUNDLE_FILE
Prints one JSON line: max abs differences of the denoised output (single window and windowed), and the size of
the motion's effect (to show the comparison is not trivial).

Both hosts get the same original-layout DiT file, the same injector weights, the same normalised reference
frame and the same retargeted motion; ComfyUI's output is the denoised x0 = x - sigma * v, compared with
``x - sigma * imanim_core.backbone.flow.denoise_once(...)``.
"""
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    comfy_dir, dit_path, bundle_path = sys.argv[1:4]
    sys.path.insert(0, HERE)
    from launch import declare_torchvision_ops

    declare_torchvision_ops()
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    import comfy.model_management as mm
    import comfy.sd

    # the node pack, imported the way ComfyUI imports a custom node folder
    spec = importlib.util.spec_from_file_location("imanim_pack", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["imanim_pack"] = pack
    spec.loader.exec_module(pack)
    from imanim_pack.nodes.sampler import patch_model
    from imanim_pack.nodes.types import Retargeted

    from imanim_core.backbone.flow import denoise_once, zero_context
    from imanim_core.backbone.latents import normalize
    from imanim_core.backbone.wan import load_dit
    from imanim_core.models.bundle import load_bundle
    from imanim_core.windows import blend, plan_frame_windows

    torch.manual_seed(0)
    frames, h, w = 17, 8, 8
    lat_t = (frames - 1) // 4 + 1
    bundle = load_bundle(bundle_path)
    dr = bundle.config.injector.in_dim
    x = torch.randn(1, 16, lat_t, h, w)
    raw_ref = torch.randn(1, 16, 1, h, w) * 2.0 + 0.3
    tokens = torch.randn(1, frames, h // 2, w // 2, dr)
    sigma = 0.7

    model = comfy.sd.load_diffusion_model(dit_path)
    r = Retargeted(tokens=tokens, identity_latent=raw_ref, frame_count=frames, width=w * 8, height=h * 8,
                   injector=bundle.injector, models_name="parity")
    dit = load_dit(dit_path).eval()
    ctx = zero_context(1)
    ref = normalize(raw_ref)

    out = {}
    for label, window, overlap in (("single", 81, 16), ("windowed", 9, 4)):
        m, injected, wrapper, info = patch_model(model, r, shift=5.0, window=window, overlap=overlap)
        mm.load_models_gpu([m])
        c = {"c_crossattn": torch.zeros(1, 1, 4096), "time_dim_concat": m.model.process_latent_in(raw_ref),
             "transformer_options": {}}
        with torch.no_grad():
            den = wrapper(m.model.apply_model, {"input": x, "timestep": torch.tensor([sigma]), "c": c})
            wins = plan_frame_windows(frames, window, overlap)
            vs = [denoise_once(dit, x[:, :, wi.latents], sigma, ctx, reference=ref, motion=tokens[:, wi.frames],
                               injector=bundle.injector) for wi in wins]
            v = blend(vs, wins, lat_t, dim=2)
            den_d = x - sigma * v
            out[label] = float((den - den_d).abs().max())
            out[label + "_windows"] = len(wins)
            if label == "single":
                injected.set_motion(None)
                den0 = m.model.apply_model(x, torch.tensor([sigma]), **c)
                out["motion_effect"] = float((den - den0).abs().max())
                out["scale"] = float(den.abs().max())
        injected.set_motion(None)
        mm.unload_all_models()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
