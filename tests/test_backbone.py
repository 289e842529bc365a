"""Wan backbone: shipped configs, original <-> diffusers keys, load/save, latents, VAE helpers (tiny models, CPU)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from imanim_core.backbone import convert, latents, wan
from imanim_core.errors import CheckpointError, IMAnimError, InputError

TINY_DIT_PARAMS = 5_894_464
TINY_VAE_PARAMS = 3_602_371


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast and does not collapse when the shared CPU is oversubscribed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return wan.build_dit("tiny").eval()


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(1)
    return wan.build_vae("wan2.1-tiny").eval()  # the Wan 2.1 VAE code path, base_dim 16


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


# ---------------------------------------------------------------------------------------------- configs
def test_shipped_dit_configs_hold_the_wan21_hyper_parameters():
    expect = {"wan2.1-t2v-1.3b": (12, 30, 8960), "wan2.1-t2v-14b": (40, 40, 13824), "tiny": (2, 4, 1024)}
    for name, (heads, layers, ffn) in expect.items():
        cfg = wan.dit_config(name)
        assert (cfg["num_attention_heads"], cfg["num_layers"], cfg["ffn_dim"]) == (heads, layers, ffn)
        assert cfg["attention_head_dim"] == 128 and cfg["text_dim"] == 4096 and cfg["freq_dim"] == 256
        assert cfg["patch_size"] == [1, 2, 2] and cfg["in_channels"] == 16 and cfg["out_channels"] == 16
        assert cfg["qk_norm"] == "rms_norm_across_heads" and cfg["cross_attn_norm"] is True
        assert cfg["eps"] == 1e-6 and cfg["rope_max_seq_len"] == 1024
    assert wan.dit_config("1.3B")["num_attention_heads"] * 128 == 1536
    assert wan.dit_config("wan2.1_t2v_14B")["num_attention_heads"] * 128 == 5120


def test_shipped_vae_configs():
    assert wan.vae_config("tiny") == {"architecture": "TinyVideoVAE", "latent_channels": 16}
    for name, base in (("wan2.1", 96), ("wan2.1-tiny", 16)):
        cfg = wan.vae_config(name)
        assert cfg["base_dim"] == base and cfg["z_dim"] == 16 and cfg["dim_mult"] == [1, 2, 4, 4]
        assert cfg["num_res_blocks"] == 2 and cfg["temperal_downsample"] == [False, True, True]
        assert cfg["latents_mean"] == list(latents.LATENTS_MEAN) and cfg["latents_std"] == list(latents.LATENTS_STD)
        assert "latents_mean" not in json.loads((wan.CONFIG_DIR / wan.VAE_PRESETS[name]).read_text())


def test_bad_preset_and_config_are_clear_errors():
    with pytest.raises(IMAnimError, match="unknown Wan DiT preset"):
        wan.dit_config("huge")
    with pytest.raises(IMAnimError, match="unknown keys"):
        wan.build_dit({**wan.dit_config("tiny"), "num_heads": 2})


def test_tiny_models_sizes(dit, vae):
    assert sum(p.numel() for p in dit.parameters()) == TINY_DIT_PARAMS
    assert sum(p.numel() for p in vae.parameters()) == TINY_VAE_PARAMS
    assert dit.config.num_attention_heads * dit.config.attention_head_dim == 256


# ---------------------------------------------------------------------------------------------- key conversion
def test_dit_round_trip_is_exact_both_ways(dit):
    sd = dit.state_dict()
    orig = convert.dit_diffusers_to_original(sd)
    back = convert.dit_original_to_diffusers(orig)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)
    orig2 = convert.dit_diffusers_to_original(convert.dit_original_to_diffusers(orig))
    assert list(orig2) == list(orig) and all(orig2[k] is orig[k] for k in orig)


def test_vae_round_trip_is_exact_both_ways(vae):
    sd = vae.state_dict()
    orig = convert.vae_diffusers_to_original(sd)
    back = convert.vae_original_to_diffusers(orig)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    orig2 = convert.vae_diffusers_to_original(convert.vae_original_to_diffusers(orig))
    assert set(orig2) == set(orig) and all(orig2[k] is orig[k] for k in orig)


def test_original_names_are_the_ones_comfyui_reads(dit, vae):
    o = _shapes(convert.dit_diffusers_to_original(dit.state_dict()))
    d = 256
    expected = {
        "patch_embedding.weight": (d, 16, 1, 2, 2), "text_embedding.0.weight": (d, 4096),
        "text_embedding.2.weight": (d, d), "time_embedding.0.weight": (d, 256), "time_embedding.2.weight": (d, d),
        "time_projection.1.weight": (6 * d, d), "head.head.weight": (64, d), "head.modulation": (1, 2, d),
        "blocks.3.self_attn.q.weight": (d, d), "blocks.3.self_attn.o.bias": (d,),
        "blocks.3.self_attn.norm_q.weight": (d,), "blocks.3.cross_attn.norm_k.weight": (d,),
        "blocks.3.cross_attn.v.weight": (d, d), "blocks.3.norm3.weight": (d,), "blocks.3.norm3.bias": (d,),
        "blocks.3.ffn.0.weight": (1024, d), "blocks.3.ffn.2.weight": (d, 1024), "blocks.3.modulation": (1, 6, d),
    }
    for k, shape in expected.items():
        assert o[k] == shape, k
    per_block = {k.split(".", 2)[2] for k in o if k.startswith("blocks.0.")}
    assert len(per_block) == 4 * 2 * 2 + 4 + 2 + 2 * 2 + 1  # q,k,v,o x2 attn (w,b) + qk norms + norm3 + ffn + mod
    assert not any(k.startswith("blocks.4.") for k in o)

    v = _shapes(convert.vae_diffusers_to_original(vae.state_dict()))
    for k in ("encoder.conv1.weight", "encoder.downsamples.0.residual.0.gamma",
              "encoder.downsamples.2.resample.1.weight", "encoder.downsamples.5.time_conv.weight",
              "encoder.middle.1.to_qkv.weight", "encoder.head.2.weight",
              "decoder.conv1.weight", "decoder.upsamples.3.resample.1.weight", "decoder.upsamples.7.time_conv.weight",
              "decoder.upsamples.4.shortcut.weight", "decoder.upsamples.14.residual.6.weight", "decoder.head.0.gamma",
              "conv1.weight", "conv2.weight"):
        assert k in v, k
    assert v["conv1.weight"] == (32, 32, 1, 1, 1) and v["conv2.weight"] == (16, 16, 1, 1, 1)
    assert "encoder.downsamples.2.time_conv.weight" not in v  # temperal_downsample[0] is False
    assert v["decoder.head.0.gamma"][0] == 16  # ComfyUI reads the VAE base width here


def test_table_agrees_with_diffusers_single_file_converter(dit, vae):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

    o = convert.dit_diffusers_to_original(dit.state_dict())
    theirs = convert_wan_transformer_to_diffusers(dict(o))
    ours = convert.dit_original_to_diffusers(o)
    assert set(theirs) == set(ours) and all(theirs[k] is ours[k] for k in ours)
    vo = convert.vae_diffusers_to_original(vae.state_dict())
    theirs = convert_wan_vae_to_diffusers(dict(vo))
    ours = convert.vae_original_to_diffusers(vo)
    assert set(theirs) == set(ours) and all(theirs[k] is ours[k] for k in ours)


def test_unknown_keys_are_refused(dit):
    sd = dict(dit.state_dict())
    sd["blocks.0.attn1.to_q.lora_A.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="lora_A.*merge"):
        convert.dit_diffusers_to_original(sd)
    with pytest.raises(CheckpointError, match="not part of a Wan 2.1 model"):
        convert.dit_original_to_diffusers({"head.modulation": torch.zeros(1, 2, 8), "foo.weight": torch.zeros(1)})


def test_prefixed_checkpoint_converts(dit):
    o = convert.dit_diffusers_to_original(dit.state_dict())
    full = {"model.diffusion_model." + k: v for k, v in o.items()}
    full["vae.encoder.conv1.weight"] = torch.zeros(1)
    back = convert.dit_original_to_diffusers(full)
    assert set(back) == set(dit.state_dict())


def test_wan21_1p3b_and_14b_key_sets_on_meta():
    params = {}
    for name, dim, layers in (("wan2.1-t2v-1.3b", 1536, 30), ("wan2.1-t2v-14b", 5120, 40)):
        with torch.device("meta"):
            big = wan.build_dit(name)
        shapes = _shapes(big.state_dict())
        orig = convert.dit_diffusers_to_original(shapes)
        assert len(orig) == len(shapes) == 15 + layers * 27
        assert orig["head.modulation"] == (1, 2, dim) and orig["patch_embedding.weight"] == (dim, 16, 1, 2, 2)
        assert orig[f"blocks.{layers - 1}.ffn.0.weight"] == (wan.dit_config(name)["ffn_dim"], dim)
        assert convert.detect_wan_kind(orig) == "wan_dit"
        assert convert.dit_config_from_shapes(orig) == wan.dit_config(name)  # what load_dit / ComfyUI infer
        info = convert.describe_wan(orig)
        assert (info["dim"], info["layers"], info["heads"]) == (dim, layers, dim // 128)
        assert info["params"] == sum(p.numel() for p in big.parameters())
        params[name] = info["params"]
    assert 1.40e9 < params["wan2.1-t2v-1.3b"] < 1.45e9 and 14.0e9 < params["wan2.1-t2v-14b"] < 14.5e9


def test_wan21_vae_key_set_on_meta():
    with torch.device("meta"):
        v = wan.build_vae("wan2.1")
    orig = convert.vae_diffusers_to_original(_shapes(v.state_dict()))
    assert convert.detect_wan_kind(orig) == "wan_vae"
    cfg = convert.vae_config_from_shapes(orig)
    preset = wan.vae_config("wan2.1")
    assert {k: preset[k] for k in cfg} == cfg
    assert convert.describe_wan(orig)["params"] == sum(p.numel() for p in v.parameters())


def test_detect_wan_kind(dit, vae):
    o = convert.dit_diffusers_to_original(dit.state_dict())
    vo = convert.vae_diffusers_to_original(vae.state_dict())
    assert convert.detect_wan_kind(o) == "wan_dit"
    assert convert.detect_wan_kind(list(o)) == "wan_dit"
    assert convert.detect_wan_kind({"model.diffusion_model." + k: v for k, v in o.items()}) == "wan_dit"
    assert convert.detect_wan_kind(vo) == "wan_vae"
    assert convert.detect_wan_kind(["vae." + k for k in vo]) == "wan_vae"
    assert convert.detect_wan_kind(dit.state_dict()) is None  # diffusers layout
    assert convert.detect_wan_layout(dit.state_dict()) == ("wan_dit", "diffusers")
    assert convert.detect_wan_layout(vae.state_dict()) == ("wan_vae", "diffusers")
    assert convert.detect_wan_kind({"latent_tokens": 0, "encoder.patch_embed.weight": 0}) is None
    assert convert.detect_wan_kind([]) is None
    assert convert.detect_wan_kind(list(vo) + ["decoder.upsamples.0.upsamples.0.residual.2.weight"]) is None  # 2.2
    assert wan.detect_wan_kind is convert.detect_wan_kind  # the name the inspect command imports


# ---------------------------------------------------------------------------------------------- files
def _out(model, x, t=500.0):
    dt = model.blocks[0].attn1.to_q.weight.dtype
    ctx = torch.zeros(x.shape[0], 3, 4096, dtype=dt)
    with torch.no_grad():
        return model(hidden_states=x.to(dt), timestep=torch.full((x.shape[0],), t), encoder_hidden_states=ctx,
                     return_dict=False)[0]


def test_save_load_dit_gives_identical_outputs(dit, tmp_path):
    path = wan.save_dit(dit, tmp_path / "sub" / "dit.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == set(convert.dit_diffusers_to_original(dit.state_dict()))
    assert meta["format"] == "wan-dit" and meta["layout"] == "original"
    assert json.loads(meta["config"])["num_layers"] == 4
    loaded = wan.load_dit(path)
    x = torch.randn(1, 16, 3, 8, 8)
    assert torch.equal(_out(dit, x), _out(loaded, x))
    assert all(p.requires_grad for p in loaded.parameters())
    assert not list(tmp_path.joinpath("sub").glob("*.tmp"))


def test_load_dit_without_metadata_and_with_prefix(dit, tmp_path):
    o = {k: v.contiguous() for k, v in convert.dit_diffusers_to_original(dit.state_dict()).items()}
    save_file({"model.diffusion_model." + k: v for k, v in o.items()}, str(tmp_path / "plain.safetensors"))
    loaded = wan.load_dit(tmp_path / "plain.safetensors")
    assert loaded.config.num_attention_heads == 2 and loaded.config.num_layers == 4
    x = torch.randn(1, 16, 1, 4, 4)
    assert torch.equal(_out(dit, x), _out(loaded, x))


def test_load_accepts_a_diffusers_layout_file(dit, vae, tmp_path):
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(tmp_path / "d.safetensors"))
    loaded = wan.load_dit(tmp_path / "d.safetensors")
    x = torch.randn(1, 16, 1, 4, 4)
    assert torch.equal(_out(dit, x), _out(loaded, x))
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(tmp_path / "v.safetensors"))
    assert wan.load_vae(tmp_path / "v.safetensors").config.base_dim == 16


def test_save_dit_fp16_and_load_bf16(dit, tmp_path):
    p32 = wan.save_dit(dit, tmp_path / "a.safetensors")
    p16 = wan.save_dit(dit, tmp_path / "b.safetensors", dtype=torch.float16)
    assert abs(p16.stat().st_size * 2 - p32.stat().st_size) < 0.01 * p32.stat().st_size
    assert wan.inspect_wan_file(p16)["dtypes"] == ["F16"]
    m = wan.load_dit(p32, dtype=torch.bfloat16)
    assert m.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert m.scale_shift_table.dtype == torch.float32  # diffusers' _keep_in_fp32_modules
    assert torch.isfinite(_out(m, torch.randn(1, 16, 1, 4, 4))).all()


def test_save_dit_with_injector_attached_writes_the_plain_dit(dit, tmp_path):
    from imanim_core.config import InjectorConfig
    from imanim_core.models.injector import MotionInjector, attach_to, detach

    attach_to(dit, MotionInjector(InjectorConfig(in_dim=8, dit_dim=256, hidden=16)))
    try:
        path = wan.save_dit(dit, tmp_path / "dit.safetensors")
    finally:
        detach(dit)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(convert.dit_diffusers_to_original(dit.state_dict()))


def test_load_errors_are_clear(dit, vae, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        wan.load_dit(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        wan.load_dit(tmp_path / "junk.safetensors")
    save_file({"latent_tokens": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a Wan 2.1 file"):
        wan.load_dit(tmp_path / "other.safetensors")
    vpath = wan.save_vae(vae, tmp_path / "vae.safetensors", dtype=torch.float16)
    with pytest.raises(CheckpointError, match="is a Wan 2.1 VAE, expected Wan DiT"):
        wan.load_dit(vpath)
    o = {k: v.contiguous() for k, v in convert.dit_diffusers_to_original(dit.state_dict()).items()}
    o["blocks.0.ffn.0.weight"] = o["blocks.0.ffn.0.weight"][:512].contiguous()
    save_file(o, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="does not match its config"):
        wan.load_dit(tmp_path / "bad.safetensors")


def test_save_load_vae_and_encode_decode_shapes(vae, tmp_path):
    path = wan.save_vae(vae, tmp_path / "vae.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(convert.vae_diffusers_to_original(vae.state_dict()))
        assert f.metadata()["format"] == "wan-vae"
    loaded = wan.load_vae(path)
    torch.manual_seed(0)
    video = torch.rand(1, 3, 5, 16, 24) * 2 - 1
    with torch.no_grad():
        z = wan.vae_encode(loaded, video)
        assert z.shape == (1, 16, 2, 2, 3)
        assert torch.equal(z, wan.vae_encode(vae, video))
        raw = vae.encode(video).latent_dist.mode()
        assert torch.allclose(latents.denormalize(z), raw, atol=1e-5)
        y = wan.vae_decode(loaded, z)
    assert y.shape == (1, 3, 5, 16, 24) and y.min() >= -1 and y.max() <= 1
    with torch.no_grad():
        assert wan.vae_encode(vae, video[:, :, :1]).shape == (1, 16, 1, 2, 3)


def test_vae_helpers_reject_bad_video(vae):
    with pytest.raises(InputError, match="4n\\+1 frames"):
        wan.vae_encode(vae, torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(InputError, match="multiples of 8"):
        wan.vae_encode(vae, torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        wan.vae_encode(vae, torch.full((1, 3, 1, 16, 16), 255.0))
    with pytest.raises(InputError, match="B, 3, T, H, W"):
        wan.vae_encode(vae, torch.zeros(3, 1, 16, 16))
    with pytest.raises(InputError, match="B, 16, T, h, w"):
        wan.vae_decode(vae, torch.zeros(1, 4, 1, 2, 2))


# ---------------------------------------------------------------------------------------------- latents
def test_latent_stats_match_diffusers_and_round_trip():
    from diffusers import AutoencoderKLWan
    import inspect

    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(latents.LATENTS_MEAN) == defaults["latents_mean"].default
    assert list(latents.LATENTS_STD) == defaults["latents_std"].default
    z = torch.randn(2, 16, 3, 4, 4) * 3
    n = latents.normalize(z)
    assert torch.allclose(n[:, 7], (z[:, 7] - 1.5508) / 2.0743)
    assert torch.allclose(latents.denormalize(n), z, atol=1e-6)
    assert latents.normalize(torch.zeros(1, 16, 4, 4)).shape == (1, 16, 4, 4)
    with pytest.raises(InputError, match="16 channels"):
        latents.normalize(torch.zeros(1, 4, 1, 4, 4))


def test_describe_wan_on_key_list_and_header(dit, tmp_path):
    o = convert.dit_diffusers_to_original(dit.state_dict())
    assert convert.describe_wan(list(o)) == {"kind": "wan_dit", "layout": "original", "layers": 4}
    info = wan.inspect_wan_file(wan.save_dit(dit, tmp_path / "d.safetensors"))
    assert (info["dim"], info["heads"], info["layers"], info["params"]) == (256, 2, 4, TINY_DIT_PARAMS)
    assert info["params"] == sum(math.prod(v.shape) for v in o.values())
    assert convert.describe_wan({"x": torch.zeros(1)}) == {"kind": None, "layout": None}


def test_a_fresh_tiny_video_vae_starts_with_exact_block_colours():
    """TinyVideoVAE.init_for_training builds a colour path: before any training, a flat clip comes back in its own
    colour (the v2 VAE, trained without it, decoded a green going 0.2 -> 0.7 as 0.34 -> 0.39), and a clip comes
    back as its 8x8-block means (nearest-neighbour upsampled) apart from the small random detail channels."""
    import torch.nn.functional as F

    from imanim_core.backbone.taehv import COLOUR_GAIN, COLOUR_LATENTS, TinyVideoVAE

    torch.manual_seed(0)
    v = TinyVideoVAE()
    v.init_for_training(latents.LATENTS_MEAN)
    v.eval()
    for colour in [(0.4, 0.2, 0.3), (0.4, 0.7, 0.3), (0.9, 0.1, 0.6)]:
        x = torch.tensor(colour).view(1, 3, 1, 1, 1).expand(1, 3, 5, 32, 32) * 2 - 1
        with torch.no_grad():
            y = (v.decode_raw(v.encode_raw(x)) + 1) / 2
        inner = y[0, :, :, 8:24, 8:24].mean((1, 2, 3))
        assert torch.allclose(inner, torch.tensor(colour), atol=0.06), (colour, inner)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 1, 4, 4, generator=g).repeat_interleave(8, 3).repeat_interleave(8, 4).expand(1, 3, 5, 32, 32)
    with torch.no_grad():
        z = v.encode_raw(x * 2 - 1)
        y = (v.decode_raw(z) + 1) / 2
    blocks = F.avg_pool2d(x[0, :, 0], 8)
    mean = torch.tensor(latents.LATENTS_MEAN)[list(COLOUR_LATENTS)].view(3, 1, 1)
    colour = (z[0, list(COLOUR_LATENTS), 0] - mean) / COLOUR_GAIN + 0.5  # the colour latents: the block means
    assert torch.allclose(colour, blocks, atol=1e-4)
    assert (y[0, :, -1, 10:22, 10:22] - x[0, :, 0, 10:22, 10:22]).abs().mean() < 0.08
