"""The one place that knows Wan's original key layout.

Two layouts of the same Wan 2.1 weights exist:

- **original** — the names of the Wan release, read by ComfyUI (``comfy/ldm/wan/model.py``, ``vae.py``) and by
  diffusers' ``from_single_file``: ``patch_embedding.weight``, ``blocks.N.self_attn.q.weight``,
  ``head.modulation``, ... and for the VAE ``encoder.conv1.weight``, ``decoder.upsamples.N...``, ``conv1``, ``conv2``.
  Every Wan file we write uses this layout.
- **diffusers** — the parameter names of ``WanTransformer3DModel`` / ``AutoencoderKLWan``, which we train and
  run in ``imanim_core``.

Decision (documented for the lead): the conversion is a **table**, built from the model's structure (number of
blocks; VAE levels and residual blocks per level) and used in both directions, so each direction is an exact
bijection by construction — the same tensor objects under renamed keys, no copies, no reshapes, and a key
outside the table is an error (never silently dropped or passed through). diffusers'
``convert_wan_transformer_to_diffusers`` / ``convert_wan_vae_to_diffusers`` (``diffusers.loaders.single_file_utils``)
only go one way, are string-replacement based (a ``norm2``/``norm3`` swap through a placeholder, a decoder
table hard-wired to 2 residual blocks) and pass unknown keys through, so they cannot be inverted safely;
``tests/test_backbone.py`` checks that our table agrees with them key for key.

Nothing here imports diffusers or ComfyUI.
"""
from __future__ import annotations

import math
import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from ..errors import CheckpointError

__all__ = [
    "DIT_PREFIXES", "VAE_PREFIXES", "DIT_ANCHOR", "VAE_ANCHOR", "find_prefix", "strip_prefix",
    "dit_key_table", "vae_key_table",
    "dit_original_to_diffusers", "dit_diffusers_to_original",
    "vae_original_to_diffusers", "vae_diffusers_to_original",
    "detect_wan_kind", "detect_wan_layout", "describe_wan",
    "dit_config_from_shapes", "vae_config_from_shapes",
]

# Prefixes under which whole-checkpoint files store the parts (ComfyUI checkpoints, some fine-tunes).
DIT_PREFIXES = ("model.diffusion_model.",)
VAE_PREFIXES = ("vae.", "first_stage_model.")
DIT_ANCHOR = "head.modulation"  # a key every Wan DiT has (ComfyUI detects Wan 2.1 by it)
VAE_ANCHOR = "encoder.conv1.weight"

HEAD_DIM = 128  # Wan's attention head width (ComfyUI infers num_heads = dim // 128)

_WB = ("weight", "bias")
_W = ("weight",)

# ---------------------------------------------------------------------------------------------- DiT table
# (original module, diffusers module, leaf names); leaf None = the entry is a parameter itself.
_DIT_TOP = (
    ("patch_embedding", "patch_embedding", _WB),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1", _WB),
    ("text_embedding.2", "condition_embedder.text_embedder.linear_2", _WB),
    ("time_embedding.0", "condition_embedder.time_embedder.linear_1", _WB),
    ("time_embedding.2", "condition_embedder.time_embedder.linear_2", _WB),
    ("time_projection.1", "condition_embedder.time_proj", _WB),
    ("head.head", "proj_out", _WB),
    ("head.modulation", "scale_shift_table", None),
    # image-to-video / first-last-frame variants (CLIP image projection)
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1", _WB),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj", _WB),
    ("img_emb.proj.3", "condition_embedder.image_embedder.ff.net.2", _WB),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2", _WB),
    ("img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed", None),
)
_DIT_BLOCK = (
    ("self_attn.q", "attn1.to_q", _WB),
    ("self_attn.k", "attn1.to_k", _WB),
    ("self_attn.v", "attn1.to_v", _WB),
    ("self_attn.o", "attn1.to_out.0", _WB),
    ("self_attn.norm_q", "attn1.norm_q", _W),
    ("self_attn.norm_k", "attn1.norm_k", _W),
    ("cross_attn.q", "attn2.to_q", _WB),
    ("cross_attn.k", "attn2.to_k", _WB),
    ("cross_attn.v", "attn2.to_v", _WB),
    ("cross_attn.o", "attn2.to_out.0", _WB),
    ("cross_attn.norm_q", "attn2.norm_q", _W),
    ("cross_attn.norm_k", "attn2.norm_k", _W),
    ("cross_attn.k_img", "attn2.add_k_proj", _WB),  # i2v
    ("cross_attn.v_img", "attn2.add_v_proj", _WB),  # i2v
    ("cross_attn.norm_k_img", "attn2.norm_added_k", _W),  # i2v
    ("norm3", "norm2", _WB),  # the affine cross-attention norm (original norm1/norm2 have no parameters)
    ("ffn.0", "ffn.net.0.proj", _WB),
    ("ffn.2", "ffn.net.2", _WB),
    ("modulation", "scale_shift_table", None),
)


def _expand(rows, orig_prefix: str, diff_prefix: str, out: List[Tuple[str, str]]) -> None:
    for o, d, leaves in rows:
        if leaves is None:
            out.append((orig_prefix + o, diff_prefix + d))
        else:
            for leaf in leaves:
                out.append((f"{orig_prefix}{o}.{leaf}", f"{diff_prefix}{d}.{leaf}"))


def _check_bijective(pairs: List[Tuple[str, str]], what: str) -> Dict[str, str]:
    fwd = dict(pairs)
    if len(fwd) != len(pairs) or len(set(fwd.values())) != len(pairs):  # pragma: no cover - table bug
        raise AssertionError(f"{what} key table is not a bijection")
    return fwd


def dit_key_table(num_layers: int) -> Dict[str, str]:
    """Every original -> diffusers key of a Wan 2.1 DiT with ``num_layers`` blocks (t2v and i2v keys)."""
    pairs: List[Tuple[str, str]] = []
    _expand(_DIT_TOP, "", "", pairs)
    for n in range(num_layers):
        _expand(_DIT_BLOCK, f"blocks.{n}.", f"blocks.{n}.", pairs)
    return _check_bijective(pairs, "DiT")


# ---------------------------------------------------------------------------------------------- VAE table
_VAE_RES = (
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.weight", "conv1.weight"),
    ("residual.2.bias", "conv1.bias"),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.weight", "conv2.weight"),
    ("residual.6.bias", "conv2.bias"),
    ("shortcut.weight", "conv_shortcut.weight"),
    ("shortcut.bias", "conv_shortcut.bias"),
)
_VAE_RESAMPLE = tuple((k, k) for k in ("resample.1.weight", "resample.1.bias", "time_conv.weight", "time_conv.bias"))
_VAE_ATTN = tuple((k, k) for k in ("norm.gamma", "to_qkv.weight", "to_qkv.bias", "proj.weight", "proj.bias"))


def _leaf_pairs(rows, o: str, d: str, out: List[Tuple[str, str]]) -> None:
    for a, b in rows:
        out.append((f"{o}.{a}", f"{d}.{b}"))


def vae_key_table(num_levels: int = 4, num_res_blocks: int = 2) -> Dict[str, str]:
    """Every original -> diffusers key of a Wan 2.1 VAE (``len(dim_mult)`` levels, ``num_res_blocks`` per level).

    Original encoder/decoder stages are flat ``nn.Sequential`` s: the encoder has ``num_res_blocks`` residual
    blocks then a resample per level (diffusers keeps the same flat indices in ``down_blocks``); the decoder has
    ``num_res_blocks + 1`` residual blocks then a resample per level, which diffusers groups as
    ``up_blocks.<level>.resnets.<j>`` / ``up_blocks.<level>.upsamplers.0``.
    """
    pairs: List[Tuple[str, str]] = []
    for o, d in (("conv1", "quant_conv"), ("conv2", "post_quant_conv")):
        for leaf in _WB:
            pairs.append((f"{o}.{leaf}", f"{d}.{leaf}"))
    for side in ("encoder", "decoder"):
        for leaf in _WB:
            pairs.append((f"{side}.conv1.{leaf}", f"{side}.conv_in.{leaf}"))
            pairs.append((f"{side}.head.2.{leaf}", f"{side}.conv_out.{leaf}"))
        pairs.append((f"{side}.head.0.gamma", f"{side}.norm_out.gamma"))
        _leaf_pairs(_VAE_RES, f"{side}.middle.0", f"{side}.mid_block.resnets.0", pairs)
        _leaf_pairs(_VAE_ATTN, f"{side}.middle.1", f"{side}.mid_block.attentions.0", pairs)
        _leaf_pairs(_VAE_RES, f"{side}.middle.2", f"{side}.mid_block.resnets.1", pairs)
    flat = 0
    for level in range(num_levels):
        for _ in range(num_res_blocks):
            _leaf_pairs(_VAE_RES, f"encoder.downsamples.{flat}", f"encoder.down_blocks.{flat}", pairs)
            flat += 1
        if level != num_levels - 1:
            _leaf_pairs(_VAE_RESAMPLE, f"encoder.downsamples.{flat}", f"encoder.down_blocks.{flat}", pairs)
            flat += 1
    flat = 0
    for level in range(num_levels):
        for j in range(num_res_blocks + 1):
            _leaf_pairs(_VAE_RES, f"decoder.upsamples.{flat}", f"decoder.up_blocks.{level}.resnets.{j}", pairs)
            flat += 1
        if level != num_levels - 1:
            _leaf_pairs(_VAE_RESAMPLE, f"decoder.upsamples.{flat}", f"decoder.up_blocks.{level}.upsamplers.0", pairs)
            flat += 1
    return _check_bijective(pairs, "VAE")


# ---------------------------------------------------------------------------------------------- helpers
def _keys(obj) -> List[str]:
    if isinstance(obj, Mapping):
        return [str(k) for k in obj.keys()]
    if isinstance(obj, (str, bytes)):
        raise CheckpointError("expected a state dict or a list of keys, got a single string")
    return [str(k) for k in obj]


def find_prefix(keys, prefixes: Iterable[str], anchor: str) -> str:
    """The prefix under which ``anchor`` sits (``''`` when it is at the top level or absent)."""
    keyset = set(_keys(keys))
    if anchor in keyset:
        return ""
    for p in prefixes:
        if p + anchor in keyset:
            return p
    return ""


def strip_prefix(sd: Mapping, prefixes: Iterable[str], anchor: str):
    """If ``anchor`` is missing but ``<prefix><anchor>`` exists, return only the keys under that prefix, stripped.

    A whole-checkpoint file (DiT + VAE + text encoder) thus yields just the part asked for. Otherwise ``sd`` is
    returned unchanged. Works on a mapping (returns a dict) or on a key list (returns a list).
    """
    p = find_prefix(sd, prefixes, anchor)
    if not p:
        return sd
    n = len(p)
    if isinstance(sd, Mapping):
        return {k[n:]: v for k, v in sd.items() if k.startswith(p)}
    return [k[n:] for k in _keys(sd) if k.startswith(p)]


def _count_indexed(keys: Iterable[str], prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = [int(m.group(1)) for k in keys for m in [pat.match(k)] if m]
    return max(idx) + 1 if idx else 0


def _convert(sd: Mapping, table: Mapping[str, str], what: str, hint: str = "") -> dict:
    out = {}
    unknown = []
    for k, v in sd.items():
        nk = table.get(k)
        if nk is None:
            unknown.append(k)
        else:
            out[nk] = v
    if unknown:
        shown = ", ".join(repr(k) for k in sorted(unknown)[:8])
        more = f" (and {len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise CheckpointError(
            f"{what}: {len(unknown)} key(s) are not part of a Wan 2.1 model in this layout: {shown}{more}.{hint}")
    return out


_LORA_HINT = (" If these are LoRA/PEFT adapter weights, merge them into the base weights first"
              " (e.g. model.fuse_lora() / unload the adapters) before converting.")


# ---------------------------------------------------------------------------------------------- DiT
def dit_original_to_diffusers(sd: Mapping) -> dict:
    """Original-layout Wan DiT state dict -> ``WanTransformer3DModel`` state dict (same tensor objects).

    A ``model.diffusion_model.`` prefix is recognised and stripped (other keys of such a file are ignored).
    """
    sd = strip_prefix(sd, DIT_PREFIXES, DIT_ANCHOR)
    n = _count_indexed(sd.keys(), "blocks.")
    return _convert(sd, dit_key_table(n), "Wan DiT (original layout)")


def dit_diffusers_to_original(sd: Mapping) -> dict:
    """``WanTransformer3DModel`` state dict -> original Wan layout (same tensor objects); exact inverse."""
    n = _count_indexed(sd.keys(), "blocks.")
    inv = {d: o for o, d in dit_key_table(n).items()}
    return _convert(sd, inv, "Wan DiT (diffusers layout)", _LORA_HINT)


# ---------------------------------------------------------------------------------------------- VAE
def _vae_structure_original(keys: List[str]) -> Tuple[int, int]:
    e = _count_indexed(keys, "encoder.downsamples.")
    d = _count_indexed(keys, "decoder.upsamples.")
    if e == 0 and d == 0:
        return 4, 2
    levels = d - e  # e = L*(R+1) - 1, d = L*(R+2) - 1
    if levels <= 0 or (e + 1) % levels:
        raise CheckpointError(
            f"Wan VAE (original layout): {e} encoder stages and {d} decoder stages do not form a Wan 2.1 VAE")
    return levels, (e + 1) // levels - 1


def _vae_structure_diffusers(keys: List[str]) -> Tuple[int, int]:
    levels = _count_indexed(keys, "decoder.up_blocks.")
    if levels == 0:
        return 4, 2
    return levels, _count_indexed(keys, "decoder.up_blocks.0.resnets.") - 1


def vae_original_to_diffusers(sd: Mapping) -> dict:
    """Original-layout Wan 2.1 VAE state dict -> ``AutoencoderKLWan`` state dict (same tensor objects).

    A ``vae.`` / ``first_stage_model.`` prefix is recognised and stripped.
    """
    sd = strip_prefix(sd, VAE_PREFIXES, VAE_ANCHOR)
    return _convert(sd, vae_key_table(*_vae_structure_original(list(sd.keys()))), "Wan VAE (original layout)")


def vae_diffusers_to_original(sd: Mapping) -> dict:
    """``AutoencoderKLWan`` state dict -> original Wan 2.1 VAE layout (same tensor objects); exact inverse."""
    inv = {d: o for o, d in vae_key_table(*_vae_structure_diffusers(list(sd.keys()))).items()}
    return _convert(sd, inv, "Wan VAE (diffusers layout)")


# ---------------------------------------------------------------------------------------------- detection
def detect_wan_layout(keys) -> Tuple[Optional[str], Optional[str]]:
    """``(kind, layout)``: kind ``'wan_dit'`` / ``'wan_vae'`` / None, layout ``'original'`` / ``'diffusers'`` /
    ``'taehv'`` (the tiny video VAE of ``backbone/taehv.py``, Wan 2.1 latent space) / None.

    Accepts a state dict or any iterable of keys; recognises the ``model.diffusion_model.`` (DiT) and
    ``vae.`` / ``first_stage_model.`` (VAE) prefixes of whole-checkpoint files. A Wan 2.2 VAE (48 channels,
    different structure) is not a ``wan_vae``.
    """
    ks = _keys(keys)
    dit = set(_keys(strip_prefix(ks, DIT_PREFIXES, DIT_ANCHOR)))
    if {"head.modulation", "patch_embedding.weight", "blocks.0.self_attn.q.weight"} <= dit:
        return "wan_dit", "original"
    vae = set(_keys(strip_prefix(ks, VAE_PREFIXES, VAE_ANCHOR)))
    if ({"encoder.conv1.weight", "decoder.middle.0.residual.0.gamma", "conv2.weight"} <= vae
            and "decoder.upsamples.0.upsamples.0.residual.2.weight" not in vae):
        return "wan_vae", "original"
    k = set(ks)
    if {"decoder.22.bias", "decoder.1.weight", "encoder.0.weight"} <= k:  # TAEHV layout (backbone/taehv.py)
        return "wan_vae", "taehv"
    if {"scale_shift_table", "patch_embedding.weight", "condition_embedder.time_proj.weight",
            "blocks.0.attn1.to_q.weight"} <= k:
        return "wan_dit", "diffusers"
    if ({"encoder.conv_in.weight", "decoder.mid_block.resnets.0.norm1.gamma", "post_quant_conv.weight"} <= k
            and "encoder.down_blocks.0.resnets.0.norm1.gamma" not in k):  # the latter: Wan 2.2 residual blocks
        return "wan_vae", "diffusers"
    return None, None


def detect_wan_kind(keys) -> Optional[str]:
    """``'wan_dit'``, ``'wan_vae'`` or None for a state dict / key list in the **original** Wan layout.

    Recognises a ``model.diffusion_model.`` prefix (and ``vae.`` / ``first_stage_model.`` for a VAE). Used by the
    ``inspect`` command; diffusers-layout files give None here (see :func:`detect_wan_layout`).
    """
    kind, layout = detect_wan_layout(keys)
    return kind if layout in ("original", "taehv") else None


# ---------------------------------------------------------------------------------------------- shapes -> config
def _shapes(obj) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Mapping of key -> shape from a state dict (tensors), a mapping of shapes, or None for a bare key list."""
    if not isinstance(obj, Mapping):
        return None
    out = {}
    for k, v in obj.items():
        shape = getattr(v, "shape", v)
        try:
            out[str(k)] = tuple(int(s) for s in shape)
        except TypeError:
            return None
    return out


def _need(shapes: Mapping, key: str, what: str):
    if key not in shapes:
        raise CheckpointError(f"{what}: missing tensor {key!r}")
    return shapes[key]


def dit_config_from_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> dict:
    """``WanTransformer3DModel`` config inferred from original-layout tensor shapes (the way ComfyUI does).

    ``num_attention_heads = dim // 128``; everything else is read from shapes or key presence.
    """
    what = "Wan DiT"
    shapes = strip_prefix(shapes, DIT_PREFIXES, DIT_ANCHOR)
    dim = _need(shapes, "head.modulation", what)[-1]
    if dim % HEAD_DIM:
        raise CheckpointError(f"{what}: width {dim} is not a multiple of the head width {HEAD_DIM}")
    pe = _need(shapes, "patch_embedding.weight", what)  # [dim, in, pt, ph, pw]
    if len(pe) != 5:
        raise CheckpointError(f"{what}: patch_embedding.weight should be 5-D, got shape {pe}")
    patch = [int(p) for p in pe[2:]]
    head_out = _need(shapes, "head.head.weight", what)[0]
    layers = _count_indexed(shapes.keys(), "blocks.")
    cfg = {
        "patch_size": patch,
        "num_attention_heads": dim // HEAD_DIM,
        "attention_head_dim": HEAD_DIM,
        "in_channels": int(pe[1]),
        "out_channels": int(head_out // math.prod(patch)),
        "text_dim": int(_need(shapes, "text_embedding.0.weight", what)[1]),
        "freq_dim": int(_need(shapes, "time_embedding.0.weight", what)[1]),
        "ffn_dim": int(_need(shapes, "blocks.0.ffn.0.weight", what)[0]),
        "num_layers": layers,
        "cross_attn_norm": "blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads" if "blocks.0.self_attn.norm_q.weight" in shapes else None,
        "eps": 1e-6,
        "image_dim": int(shapes["img_emb.proj.0.weight"][0]) if "img_emb.proj.0.weight" in shapes else None,
        "added_kv_proj_dim": dim if "blocks.0.cross_attn.k_img.weight" in shapes else None,
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": int(shapes["img_emb.emb_pos"][1]) if "img_emb.emb_pos" in shapes else None,
    }
    return cfg


def vae_config_from_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> dict:
    """``AutoencoderKLWan`` config inferred from original-layout Wan 2.1 VAE tensor shapes."""
    what = "Wan VAE"
    shapes = strip_prefix(shapes, VAE_PREFIXES, VAE_ANCHOR)
    levels, res = _vae_structure_original(list(shapes.keys()))
    base = int(_need(shapes, "encoder.conv1.weight", what)[0])
    dim_mult, temporal = [], []
    flat = 0
    for level in range(levels):
        out_c = int(_need(shapes, f"encoder.downsamples.{flat}.residual.2.weight", what)[0])
        if out_c % base:
            raise CheckpointError(f"{what}: stage {level} width {out_c} is not a multiple of the base width {base}")
        dim_mult.append(out_c // base)
        flat += res
        if level != levels - 1:
            temporal.append(f"encoder.downsamples.{flat}.time_conv.weight" in shapes)
            flat += 1
    cfg = {
        "base_dim": base,
        "z_dim": int(_need(shapes, "conv2.weight", what)[0]),
        "dim_mult": dim_mult,
        "num_res_blocks": res,
        "attn_scales": [],
        "temperal_downsample": temporal,
        "dropout": 0.0,
        "in_channels": int(_need(shapes, "encoder.conv1.weight", what)[1]),
        "out_channels": int(_need(shapes, "decoder.head.2.weight", what)[0]),
        "is_residual": False,
    }
    dec_base = int(_need(shapes, "decoder.head.0.gamma", what)[0])
    if dec_base != base:
        cfg["decoder_base_dim"] = dec_base
    return cfg


def describe_wan(state_dict_or_keys) -> dict:
    """A short description of a Wan DiT / VAE: kind, layout, and (when shapes are known) sizes and parameters.

    Accepts a state dict, a mapping key -> shape (e.g. from a safetensors header), or a bare key list (then only
    kind, layout and the block count are reported).
    """
    kind, layout = detect_wan_layout(state_dict_or_keys)
    info: dict = {"kind": kind, "layout": layout}
    if kind is None:
        return info
    shapes = _shapes(state_dict_or_keys)
    keys = _keys(state_dict_or_keys)
    if kind == "wan_dit":
        info["layers"] = _count_indexed(_keys(strip_prefix(keys, DIT_PREFIXES, DIT_ANCHOR)), "blocks.")
    if shapes is None:
        return info
    if layout == "taehv":
        info.update(architecture="TAEHV (2D convolutions + temporal memory)", z_dim=int(shapes["decoder.1.weight"][1]),
                    params=int(sum(math.prod(s) for s in shapes.values())))
        return info
    if layout == "diffusers":
        shapes = (dit_diffusers_to_original if kind == "wan_dit" else vae_diffusers_to_original)(shapes)
    if kind == "wan_dit":
        shapes = strip_prefix(shapes, DIT_PREFIXES, DIT_ANCHOR)
        cfg = dit_config_from_shapes(shapes)
        dim = cfg["num_attention_heads"] * HEAD_DIM
        info.update(dim=dim, heads=cfg["num_attention_heads"], layers=cfg["num_layers"], ffn_dim=cfg["ffn_dim"],
                    in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], text_dim=cfg["text_dim"],
                    model_type="i2v" if cfg["image_dim"] else "t2v")
    else:
        shapes = strip_prefix(shapes, VAE_PREFIXES, VAE_ANCHOR)
        cfg = vae_config_from_shapes(shapes)
        info.update(base_dim=cfg["base_dim"], z_dim=cfg["z_dim"], dim_mult=cfg["dim_mult"],
                    num_res_blocks=cfg["num_res_blocks"])
    info["params"] = int(sum(math.prod(s) for s in shapes.values()))
    info["config"] = cfg
    return info
