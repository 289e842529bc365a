"""Write random tiny weights for the ComfyUI tests into MODELS_DIR (test harness only).

Usage: python make_models.py MODELS_DIR [COMFYUI_DIR]   (with ComfyUI's Python when COMFYUI_DIR is given)

diffusion_models/imanim_test_dit.safetensors         tiny Wan DiT, width 256 (original key layout)
diffusion_models/imanim_test_dit_w128.safetensors    tiny Wan DiT, width 128 (does not fit the bundle)
vae/imanim_test_vae.safetensors                      tiny video VAE (TAEHV layout, fp32, Wan 2.1 latents)
vae/imanim_test_taesd.safetensors                    a TAESD VAE (4 latent channels; another kind), needs ComfyUI
im_animation/imanim_test_bundle.safetensors          tokenizer/decoder/joint head/retargeter/injector (dit 256)
im_animation/imanim_test_bundle_othertok.safetensors same, but its tokenizer has another codebook (another config)
im_animation/imanim_test_tokenizer_only.safetensors  a tokenizer alone (like the released motion encoder)

The injector's zero-initialised output layer is perturbed so that the motion changes the result.
"""
import json
import os
import sys

import torch

SEED = 1234
DR = 32  # retargeted token width (= joint_dim)


def bundle_config(codebook: int = 1024):
    from imanim_core.config import (BundleConfig, InjectorConfig, JointHeadConfig, MotionDecoderConfig,
                                    RetargeterConfig, TokenizerConfig)

    tok = TokenizerConfig.preset("tiny").replace(codebook_size=codebook, layers=2)
    return BundleConfig(
        tokenizer=tok,
        motion_decoder=MotionDecoderConfig(token_dim=tok.token_dim, num_tokens=tok.num_latent_tokens, width=64,
                                           layers=2, heads=2, grid=8, joint_dim=DR),
        joint_head=JointHeadConfig(joint_dim=DR, hidden=16, upsample=2),
        retargeter=RetargeterConfig(token_dim=tok.token_dim, num_motion_tokens=tok.num_latent_tokens, width=64,
                                    layers=2, heads=2, out_dim=DR),
        injector=InjectorConfig(in_dim=DR, dit_dim=256, hidden=64),
    )


def make_bundle(path, codebook: int = 1024, seed: int = SEED):
    from imanim_core.models.bundle import IMAnimationBundle, save_bundle

    b = IMAnimationBundle.build(bundle_config(codebook), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        b.injector.fc2.weight.copy_(torch.randn(b.injector.fc2.weight.shape, generator=g) * 0.05)
        b.injector.fc2.bias.copy_(torch.randn(b.injector.fc2.bias.shape, generator=g) * 0.05)
        for p in b.joint_head.conv_out.parameters():  # visible previews
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_bundle(b, path, metadata={"note": "random test weights"})


def make_tokenizer_only(path, seed: int = SEED):
    """Like the released motion encoder: a tokenizer and nothing else."""
    from imanim_core.config import BundleConfig
    from imanim_core.models.bundle import IMAnimationBundle, save_bundle

    save_bundle(IMAnimationBundle.build(BundleConfig(tokenizer=bundle_config().tokenizer), seed=seed), path)


def make_dit(path, dim: int = 256, seed: int = SEED):
    from imanim_core.backbone.wan import build_dit, dit_config, save_dit

    cfg = dit_config("tiny")
    cfg["num_attention_heads"] = dim // cfg["attention_head_dim"]
    cfg["ffn_dim"] = 4 * dim
    torch.manual_seed(seed)
    dit = build_dit(cfg)
    with torch.no_grad():  # diffusers zero-inits some layers; make every weight matter
        for p in dit.parameters():
            if float(p.abs().max()) == 0.0:
                p.normal_(0.0, 0.02)
    save_dit(dit, path)


def make_vae(path, seed: int = SEED):
    from imanim_core.backbone.wan import build_vae, save_vae

    torch.manual_seed(seed)
    save_vae(build_vae("tiny"), path)


def make_taesd(path, comfy_dir: str):
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.taesd.taesd as taesd
    from safetensors.torch import save_file

    m = taesd.TAESD(latent_channels=4)
    sd = {k: v.contiguous() for k, v in m.state_dict().items() if k.startswith(("taesd_encoder.", "taesd_decoder."))}
    save_file(sd, str(path))


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from launch import declare_torchvision_ops

    declare_torchvision_ops()  # before diffusers/ComfyUI import torchvision (see launch.py)
    out = sys.argv[1]
    comfy_dir = sys.argv[2] if len(sys.argv) > 2 else None
    for sub in ("diffusion_models", "vae", "im_animation"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    files = {
        "dit": os.path.join(out, "diffusion_models", "imanim_test_dit.safetensors"),
        "dit_w128": os.path.join(out, "diffusion_models", "imanim_test_dit_w128.safetensors"),
        "vae": os.path.join(out, "vae", "imanim_test_vae.safetensors"),
        "bundle": os.path.join(out, "im_animation", "imanim_test_bundle.safetensors"),
        "bundle_othertok": os.path.join(out, "im_animation", "imanim_test_bundle_othertok.safetensors"),
        "tokenizer_only": os.path.join(out, "im_animation", "imanim_test_tokenizer_only.safetensors"),
    }
    make_dit(files["dit"], 256)
    make_dit(files["dit_w128"], 128)
    make_vae(files["vae"])
    make_bundle(files["bundle"])
    make_bundle(files["bundle_othertok"], codebook=512, seed=SEED + 7)
    make_tokenizer_only(files["tokenizer_only"])
    if comfy_dir:
        files["taesd"] = os.path.join(out, "vae", "imanim_test_taesd.safetensors")
        make_taesd(files["taesd"], comfy_dir)
    print(json.dumps(files))


if __name__ == "__main__":
    main()
