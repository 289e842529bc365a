"""Run with ComfyUI's Python: the same TAEHV-layout file through ComfyUI's stock VAE loader (comfy.sd.VAE) and
through imanim_core's TinyVideoVAE must encode and decode alike. Prints one JSON line.

    python vae_parity_check.py COMFYUI_DIR VAE_FILE
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def main():
    comfy_dir, vae_path = sys.argv[1:3]
    sys.path.insert(0, HERE)
    from launch import declare_torchvision_ops

    declare_torchvision_ops()
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import torch

    import comfy.sd
    import comfy.utils

    sys.path.insert(0, REPO)
    from imanim_core.backbone.wan import load_vae, vae_decode, vae_encode
    from imanim_core.backbone.latents import denormalize, normalize

    torch.manual_seed(0)
    sd = comfy.utils.load_torch_file(vae_path)
    cvae = comfy.sd.VAE(sd=sd)
    ours = load_vae(vae_path)
    video = torch.rand(9, 64, 64, 3)  # ComfyUI IMAGE layout, [0, 1]
    with torch.no_grad():
        lat_c = cvae.encode(video).float()  # raw latent [1,16,3,8,8]
        lat_o = denormalize(vae_encode(ours, video.permute(3, 0, 1, 2)[None] * 2 - 1))
        dec_c = cvae.decode(lat_c).float().reshape(-1, 64, 64, 3)  # [T,H,W,3] in ~[0,1]
        dec_o = (vae_decode(ours, normalize(lat_c))[0].permute(1, 2, 3, 0) + 1) / 2
    print(json.dumps({"kind": type(cvae.first_stage_model).__name__, "dtype": str(cvae.vae_dtype),
                      "latent_format": None if cvae.first_stage_model.latent_format is None else "set",
                      "latent_shape": list(lat_c.shape), "frames": int(dec_c.shape[0]),
                      "encode": float((lat_c - lat_o).abs().max()),
                      "decode": float((dec_c.clamp(0, 1) - dec_o.clamp(0, 1)).abs().max()),
                      "scale": float(lat_c.abs().mean())}))


if __name__ == "__main__":
    main()
