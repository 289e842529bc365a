"""The released motion-encoder layout: key set, strict loading, exact forward (vs an independent reference)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from imanim_core.config import TokenizerConfig
from imanim_core.errors import CheckpointError
from imanim_core.models.released import (RELEASED_KEYS, is_released_encoder, load_released_encoder,
                                         read_safetensors_header, released_keys)
from imanim_core.models.tokenizer import MotionTokenizer

# a small config with the released structure (class token, padding (4, 2), legacy output) for quick tests
SMALL = TokenizerConfig(image_size=64, patch_size=16, width=64, layers=2, heads=4, num_latent_tokens=32,
                        token_dim=12, codebook_size=256, patch_padding=(4, 2), legacy_output=True)


def small_layout(tools):
    # grid 4x4 with the released padding -> 17 positions
    return tools.design_layout(width=64, layers=2, codebook=256, positions=17, mlp=256)


def reference_encode(sd: dict, pixels: torch.Tensor, heads: int, padding, patch: int, legacy: bool = True):
    """The released encoder written out with plain torch ops from DESIGN §2 (not our module). fp32."""
    sd = {k: v.float() for k, v in sd.items()}
    W = sd["latent_tokens"].shape[1]
    K = sd["latent_tokens"].shape[0]
    L = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.transformer."))
    x = F.conv2d(pixels, sd["encoder.patch_embed.weight"], sd["encoder.patch_embed.bias"], stride=patch,
                 padding=padding)
    B = x.shape[0]
    x = x.reshape(B, W, -1).permute(0, 2, 1)
    x = torch.cat([sd["encoder.class_embedding"].expand(B, 1, W), x], dim=1) + sd["encoder.positional_embedding"]
    lat = (sd["latent_tokens"] + sd["encoder.latent_token_positional_embedding"]).expand(B, K, W)
    x = torch.cat([x, lat], dim=1)

    def ln(t, name):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * sd[name + ".weight"] + sd[name + ".bias"]

    x = ln(x, "encoder.ln_pre")
    dh = W // heads
    for i in range(L):
        p = f"encoder.transformer.{i}."
        h = ln(x, p + "ln_1")
        qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
        q, k, v = (t.reshape(B, -1, heads, dh).transpose(1, 2) for t in qkv.split(W, dim=-1))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, -1, W)
        x = x + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = ln(x, p + "ln_2")
        h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    lat = ln(x[:, -K:], "encoder.ln_post")  # [B,K,W]
    return reference_output_step(sd, lat, legacy)


def reference_output_step(sd: dict, lat: torch.Tensor, legacy: bool = True):
    """conv_out (1x1) after the legacy reshape or a transpose, then the L2-normalised nearest code."""
    B, K, W = lat.shape
    if legacy:
        # the memory of [B,K,W] read as [B,W,K]: element (w, k) is flat[w*K + k]
        flat = lat.contiguous().view(B, K * W)
        grid = torch.stack([flat[:, w * K:(w + 1) * K] for w in range(W)], dim=1)  # [B,W,K]
    else:
        grid = lat.transpose(1, 2)
    cw = sd["encoder.conv_out.weight"].float()[:, :, 0, 0]  # [d,W]
    z = torch.einsum("dw,bwk->bkd", cw, grid) + sd["encoder.conv_out.bias"].float()
    zn = z / z.norm(dim=-1, keepdim=True)
    cb = sd["quantize.embedding.weight"].float()
    cb = cb / cb.norm(dim=-1, keepdim=True)
    dist = ((zn[:, :, None, :] - cb[None, None]) ** 2).sum(-1)
    return z, dist.argmin(-1), dist, lat


def assert_indices_match(idx, ref_idx, dist):
    """Indices equal, except where the reference's two nearest codes are within float noise of each other."""
    top2 = dist.topk(2, dim=-1, largest=False).values
    ambiguous = (top2[..., 1] - top2[..., 0]) < 1e-5
    assert bool(((idx == ref_idx) | ambiguous).all()), (idx, ref_idx)


def test_released_keys_match_design(layout_tools):
    assert len(RELEASED_KEYS) == 301
    assert RELEASED_KEYS == layout_tools.design_layout()
    assert sum(math.prod(s) for s in RELEASED_KEYS.values()) == pytest.approx(303.5e6, rel=0.01)
    # the module's own state dict is the layout (built on meta: no memory, no compute)
    with torch.device("meta"):
        m = MotionTokenizer(TokenizerConfig.preset("large"))
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == RELEASED_KEYS
    assert list(m.buffers()) == []  # nothing outside the state dict (safe to build on meta and assign)
    assert released_keys(SMALL) == small_layout(layout_tools)


def test_full_layout_strict_load_matches_reference(released_file):
    meta, tensors = read_safetensors_header(released_file)
    assert len(tensors) == 301 and {v[0] for v in tensors.values()} == {"BF16"}
    assert is_released_encoder(released_file)
    model = load_released_encoder(released_file)  # fp32
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert all(p.requires_grad for p in model.parameters())
    from safetensors.torch import load_file

    sd = load_file(str(released_file))
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        out = model.encode(pixels)
    z_ref, idx_ref, dist, lat = reference_encode(sd, pixels, heads=16, padding=(4, 2), patch=16)
    assert out["indices"].shape == (1, 32) and out["codes"].shape == (1, 32, 12)
    torch.testing.assert_close(out["z"], z_ref, rtol=2e-4, atol=2e-4)
    assert_indices_match(out["indices"], idx_ref, dist)
    # the legacy reshape matters: a transpose would give something else entirely
    z_tr = reference_output_step(sd, lat, legacy=False)[0]
    assert (z_tr - z_ref).abs().max() > 100 * (out["z"] - z_ref).abs().max()


@pytest.mark.parametrize("file_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_small_layout_any_file_dtype(tmp_path, file_dtype, layout_tools, one_thread):
    sd = layout_tools.random_state(small_layout(layout_tools), file_dtype, seed=2)
    path = tmp_path / "small.safetensors"
    save_file(sd, str(path))
    assert is_released_encoder(path, SMALL) and not is_released_encoder(path)
    model = load_released_encoder(path, config=SMALL)
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.encode(pixels)
    z_ref, idx_ref, dist, _ = reference_encode(sd, pixels, heads=4, padding=(4, 2), patch=16)
    torch.testing.assert_close(out["z"], z_ref, rtol=1e-4, atol=1e-4)
    assert_indices_match(out["indices"], idx_ref, dist)
    for dt in (torch.float16, torch.bfloat16):
        m = load_released_encoder(path, dtype=dt, config=SMALL)
        assert {p.dtype for p in m.parameters()} == {dt}
        with torch.no_grad():
            z = m.encode(pixels)["z"]
        assert z.dtype == torch.float32
        assert F.cosine_similarity(z, z_ref, dim=-1).min() > 0.98


def test_missing_extra_and_wrong_shape_keys(tmp_path, layout_tools, one_thread):
    sd = layout_tools.random_state(small_layout(layout_tools), torch.bfloat16, seed=3)
    del sd["encoder.transformer.1.mlp.c_fc.bias"]
    sd["encoder.extra_head.weight"] = torch.zeros(3)
    sd["encoder.conv_out.weight"] = torch.zeros(12, 64, 3, 3, dtype=torch.bfloat16)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    assert not is_released_encoder(path, SMALL)
    with pytest.raises(CheckpointError) as e:
        load_released_encoder(path, config=SMALL)
    msg = str(e.value)
    assert "1 missing key(s): encoder.transformer.1.mlp.c_fc.bias" in msg
    assert "1 unexpected key(s): encoder.extra_head.weight" in msg
    assert "encoder.conv_out.weight [12, 64, 3, 3] (expected [12, 64, 1, 1])" in msg
    assert "Traceback" not in msg and "size mismatch" not in msg


def write_sparse_safetensors(path, layout: dict, dtype: str = "BF16"):
    """A valid safetensors file of zeros written by hand as a sparse file: the full 303M-parameter layout costs
    no time or disk. (Only for tests that fail before the weights are used.)"""
    import json
    import struct

    size = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, off = {}, 0
    for k, shape in layout.items():
        n = math.prod(shape) * size
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + off)
    return path


def test_full_layout_missing_and_extra_key(tmp_path):
    layout = dict(RELEASED_KEYS)
    del layout["encoder.transformer.23.attn.out_proj.bias"]
    layout["encoder.transformer.24.ln_1.weight"] = (1024,)
    path = write_sparse_safetensors(tmp_path / "motion_encoder_latest.safetensors", layout)
    assert not is_released_encoder(path)
    with pytest.raises(CheckpointError) as e:
        load_released_encoder(path)
    msg = str(e.value)
    assert "301 tensors expected, 301 found" in msg
    assert "1 missing key(s): encoder.transformer.23.attn.out_proj.bias" in msg
    assert "1 unexpected key(s): encoder.transformer.24.ln_1.weight" in msg
    # the exact layout passes the header check (zeros: strict load works, not compared here)
    ok = write_sparse_safetensors(tmp_path / "ok.safetensors", RELEASED_KEYS)
    assert is_released_encoder(ok)


def test_many_missing_keys_are_summarised(tmp_path, layout_tools, one_thread):
    sd = layout_tools.random_state(small_layout(layout_tools), torch.bfloat16, seed=4)
    sd = {k: v for k, v in sd.items() if ".transformer.1." not in k}
    path = tmp_path / "short.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"12 missing key\(s\): .*\(7 more\)"):
        load_released_encoder(path, config=SMALL)


def test_not_safetensors_and_missing(tmp_path, layout_tools):
    txt = tmp_path / "notes.safetensors"
    txt.write_text("this is not a checkpoint\n" * 20)
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_released_encoder(txt)
    tiny = tmp_path / "empty.safetensors"
    tiny.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        load_released_encoder(tiny)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_released_encoder(tmp_path / "nope.safetensors")
    # truncated file (an interrupted download)
    good = tmp_path / "good.safetensors"
    save_file(layout_tools.random_state(small_layout(layout_tools), torch.bfloat16), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_released_encoder(cut, config=SMALL)


def test_is_released_encoder_inputs():
    assert is_released_encoder(list(RELEASED_KEYS))
    assert is_released_encoder(dict(RELEASED_KEYS))
    assert not is_released_encoder(list(RELEASED_KEYS)[:-1])
    wrong = dict(RELEASED_KEYS)
    wrong["latent_tokens"] = (16, 1024)
    assert not is_released_encoder(wrong)
