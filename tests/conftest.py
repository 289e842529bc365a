"""Shared fixtures. Keep minimal: everything a test needs is generated here or in the test (no downloads)."""
from __future__ import annotations

import pytest
import torch


def design_layout(width=1024, layers=24, latent=32, dim=12, codebook=4096, patch=16, positions=257, mlp=4096):
    """The released motion-encoder layout as DESIGN.md §2 writes it (independent of imanim_core's own code)."""
    W = width
    keys = {
        "latent_tokens": (latent, W),
        "quantize.embedding.weight": (codebook, dim),
        "encoder.patch_embed.weight": (W, 3, patch, patch),
        "encoder.patch_embed.bias": (W,),
        "encoder.class_embedding": (1, W),
        "encoder.positional_embedding": (positions, W),
        "encoder.latent_token_positional_embedding": (latent, W),
        "encoder.ln_pre.weight": (W,), "encoder.ln_pre.bias": (W,),
        "encoder.ln_post.weight": (W,), "encoder.ln_post.bias": (W,),
        "encoder.conv_out.weight": (dim, W, 1, 1), "encoder.conv_out.bias": (dim,),
    }
    for i in range(layers):
        b = f"encoder.transformer.{i}."
        keys.update({b + "ln_1.weight": (W,), b + "ln_1.bias": (W,), b + "ln_2.weight": (W,), b + "ln_2.bias": (W,),
                     b + "attn.in_proj_weight": (3 * W, W), b + "attn.in_proj_bias": (3 * W,),
                     b + "attn.out_proj.weight": (W, W), b + "attn.out_proj.bias": (W,),
                     b + "mlp.c_fc.weight": (mlp, W), b + "mlp.c_fc.bias": (mlp,),
                     b + "mlp.c_proj.weight": (W, mlp), b + "mlp.c_proj.bias": (W,)})
    return keys


def random_state(layout: dict, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """Random tensors for a layout, quickly: copies of slices of a few random pools (one per kind: LayerNorm
    weights ~1, LayerNorm biases ~0.05, embeddings ~0.03, other biases ~0.01, weights ~0.02, codebook ~1) taken
    at random offsets, so every tensor differs."""
    g = torch.Generator().manual_seed(seed)
    biggest = max(int(torch.Size(s).numel()) for s in layout.values())
    base = torch.randn(biggest + 65536, generator=g)
    pools = {"ln_w": 1.0 + 0.1 * base, "ln_b": 0.05 * base, "emb": 0.03 * base, "bias": 0.01 * base,
             "w": 0.02 * base, "code": base}
    pools = {k: v.to(dtype) for k, v in pools.items()}
    offs = torch.randint(0, 65536, (len(layout),), generator=g).tolist()
    out = {}
    for (k, shape), off in zip(layout.items(), offs, strict=True):
        if ".ln_" in k:
            kind = "ln_w" if k.endswith(".weight") else "ln_b"
        elif k.startswith("quantize."):
            kind = "code"
        elif "embedding" in k or k == "latent_tokens":
            kind = "emb"
        else:
            kind = "bias" if k.endswith(".bias") else "w"
        n = int(torch.Size(shape).numel())
        out[k] = pools[kind][off:off + n].view(shape).clone()
    return out


@pytest.fixture(scope="session")
def released_file(tmp_path_factory):
    """A file with exactly the released names and shapes (301 tensors, ~303M parameters, bf16, random values)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("released") / "motion_encoder_latest.safetensors"
    save_file(random_state(design_layout(), torch.bfloat16, seed=1), str(path))
    yield path
    path.unlink(missing_ok=True)  # 600 MB: do not leave it in pytest's kept temp folders


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models gain nothing from more threads, and on a busy shared machine every
    op's thread hand-off can cost milliseconds (a 1 s test becomes 10 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def layout_tools():
    """``design_layout`` and ``random_state`` for tests (conftest is not importable under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(design_layout=design_layout, random_state=random_state)
