"""Bundle and motion-tokens files: round trips (all parts), the released file as a bundle, clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from imanim_core.config import (BundleConfig, InjectorConfig, JointHeadConfig, MotionDecoderConfig,
                                RetargeterConfig, TokenizerConfig)
from imanim_core.describe import describe_file
from imanim_core.errors import CheckpointError, IMAnimError, InputError
from imanim_core.models.bundle import (IMAnimationBundle, describe_bundle, load_bundle,
                                       load_motion_tokens, save_bundle, save_motion_tokens)

# tiny models only: single-threaded (see conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TOK = TokenizerConfig.preset("tiny")
SMALL_ALL = BundleConfig(
    tokenizer=TINY_TOK,
    motion_decoder=MotionDecoderConfig(width=32, layers=1, heads=2, grid=4, joint_dim=16),
    joint_head=JointHeadConfig(joint_dim=16, hidden=16, upsample=2),
    retargeter=RetargeterConfig(width=32, layers=1, heads=2, out_dim=16),
    injector=InjectorConfig(in_dim=16, dit_dim=32, hidden=16),
)


def perturbed(config: BundleConfig, seed=0) -> IMAnimationBundle:
    """A bundle whose every float tensor is random (zero-initialised layers would hide a failed load)."""
    b = IMAnimationBundle.build(config, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in b.parts().values():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return b.eval()


def outputs(b: IMAnimationBundle) -> dict:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        enc = b.tokenizer.encode(x)
        joint = b.motion_decoder(enc["codes"])
        heat = b.joint_head(joint)
        lat = torch.randn(1, 16, 1, 8, 8, generator=g)
        ret = b.retargeter(lat, enc["codes"][None])
        inj = b.injector(torch.randn(1, 5, 4, 4, 16, generator=g))
    return {"indices": enc["indices"], "codes": enc["codes"], "joint": joint, "heat": heat, "ret": ret, "inj": inj}


def test_round_trip_all_parts(tmp_path):
    b = perturbed(SMALL_ALL)
    path = save_bundle(b, tmp_path / "b.safetensors", metadata={"note": "test", "steps": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["b.safetensors"]  # no temp file left behind
    keys = load_file(str(path)).keys()
    assert {k.split(".")[0] for k in keys} == set(BundleConfig.PARTS)
    b2 = load_bundle(path)
    assert b2.config == SMALL_ALL and b2.source == "bundle"
    assert b2.metadata == {"note": "test", "steps": "3"}
    for part in BundleConfig.PARTS:
        m1, m2 = getattr(b, part), getattr(b2, part)
        assert type(m1) is type(m2) and not m2.training
        for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
            assert k1 == k2 and torch.equal(v1, v2), (part, k1)
    o1, o2 = outputs(b), outputs(b2)
    for k in o1:
        assert torch.equal(o1[k], o2[k]), k
    assert o1["inj"].abs().sum() > 0  # the perturbation made the zero-initialised injector output non-trivial
    # load in another dtype; save in bf16
    b16 = load_bundle(path, dtype=torch.bfloat16)
    assert {p.dtype for m in b16.parts().values() for p in m.parameters()} == {torch.bfloat16}
    p16 = save_bundle(b, tmp_path / "b16.safetensors", dtype=torch.bfloat16)
    assert {v.dtype for v in load_file(str(p16)).values()} == {torch.bfloat16}
    d = describe_bundle(b2)
    assert set(d["parts"]) == set(BundleConfig.PARTS) and d["parts"]["tokenizer"]["params"] > 0


def test_tokenizer_only_and_helpers(tmp_path):
    b = IMAnimationBundle.build(BundleConfig(tokenizer=TINY_TOK), seed=0)
    assert b.motion_decoder is None and list(b.parts()) == ["tokenizer"]
    b.to("cpu", torch.float32).eval()
    path = save_bundle(b, tmp_path / "tok.safetensors")
    b2 = load_bundle(path)
    assert b2.config.parts == ["tokenizer"] and b2.retargeter is None
    with pytest.raises(IMAnimError, match="motion_decoder"):
        save_bundle(IMAnimationBundle(config=BundleConfig(tokenizer=TINY_TOK, motion_decoder=MotionDecoderConfig()),
                                      tokenizer=b.tokenizer), tmp_path / "x.safetensors")
    with pytest.raises(InputError, match="reserved"):
        save_bundle(b, tmp_path / "y.safetensors", metadata={"format": "mine"})
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_interrupted_save_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch as st

    b = IMAnimationBundle.build(BundleConfig(tokenizer=TINY_TOK), seed=0)
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"old")

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(st, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_bundle(b, target)
    assert target.read_bytes() == b"old"  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_released_file_loads_as_tokenizer_bundle(released_file):
    b = load_bundle(released_file, dtype=torch.bfloat16)  # the file is bf16: no conversion, quick
    assert b.source == "released" and b.config.parts == ["tokenizer"]
    assert b.config.tokenizer == TokenizerConfig.preset("large")
    assert b.tokenizer.latent_tokens.dtype == torch.bfloat16
    info = describe_file(released_file)
    assert info["kind"] == "released-motion-encoder" and info["num_tensors"] == 301


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=meta)
    return path


def test_bad_bundles(tmp_path):
    b = perturbed(BundleConfig(tokenizer=TINY_TOK, injector=InjectorConfig(in_dim=16, dit_dim=32, hidden=16)))
    good = save_bundle(b, tmp_path / "good.safetensors")
    tensors = load_file(str(good))
    meta = {"format": "im-animation-bundle", "format_version": "1", "config": json.dumps(b.config.to_dict())}

    p = _write(tmp_path / "v2.safetensors", tensors, {**meta, "format_version": "2"})
    with pytest.raises(CheckpointError, match="format_version 2.*newer.*Update"):
        load_bundle(p)

    t = dict(tensors)
    del t["injector.fc1.weight"]
    t["injector.extra.weight"] = torch.zeros(2)
    p = _write(tmp_path / "mismatch.safetensors", t, meta)
    with pytest.raises(CheckpointError, match=r"part 'injector'.*missing key\(s\): fc1.weight.*unexpected key\(s\): "
                                              r"extra.weight"):
        load_bundle(p)

    t = dict(tensors)
    t["injector.fc2.bias"] = torch.zeros(7)
    p = _write(tmp_path / "shape.safetensors", t, meta)
    with pytest.raises(CheckpointError, match=r"fc2.bias \[7\] \(expected \[32\]\)"):
        load_bundle(p)

    t = dict(tensors)
    t["retargeter.proj_out.weight"] = torch.zeros(2, 2)
    p = _write(tmp_path / "stray.safetensors", t, meta)
    with pytest.raises(CheckpointError, match="belong to no part.*retargeter.proj_out.weight"):
        load_bundle(p)

    t = dict(tensors)
    t["tokenizer.quantize.embedding.weight"] = torch.zeros(t["tokenizer.quantize.embedding.weight"].shape, dtype=torch.int32)
    p = _write(tmp_path / "intw.safetensors", t, meta)
    with pytest.raises(CheckpointError, match=r"expected float tensors.*tokenizer.quantize.embedding.weight \(I32\)"):
        load_bundle(p)

    p = _write(tmp_path / "badcfg.safetensors", tensors, {**meta, "config": "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_bundle(p)
    p = _write(tmp_path / "unknownpart.safetensors", tensors, {**meta, "config": json.dumps({"vae": {}})})
    with pytest.raises(CheckpointError, match="unknown parts"):
        load_bundle(p)

    p = _write(tmp_path / "plain.safetensors", {"w": torch.zeros(3)}, {})
    with pytest.raises(CheckpointError, match="neither an IM-Animation bundle.*inspect"):
        load_bundle(p)
    txt = tmp_path / "readme.safetensors"
    txt.write_text("hello")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_bundle(txt)


def test_motion_tokens_round_trip_and_errors(tmp_path):
    idx = torch.randint(0, 1024, (9, 32))
    codes = torch.nn.functional.normalize(torch.randn(9, 32, 12), dim=-1)
    p = save_motion_tokens(tmp_path / "t.safetensors",
                           {"indices": idx, "codes": codes, "config": TINY_TOK, "fps": 12.5},
                           metadata={"source": "clip.mp4"})
    t = load_motion_tokens(p)
    assert torch.equal(t["indices"], idx) and torch.equal(t["codes"], codes)
    assert t["config"] == TINY_TOK and t["fps"] == 12.5 and t["metadata"] == {"source": "clip.mp4"}
    info = describe_file(p)
    assert info["kind"] == "im-animation-motion-tokens" and info["frames"] == 9 and info["tokens"] == 32
    # the same dict saves again (the Save node gets what the Load node gives)
    save_motion_tokens(tmp_path / "t2.safetensors", t)
    with pytest.raises(CheckpointError, match="motion-tokens file"):
        load_bundle(p)
    with pytest.raises(InputError, match=r"'codes' must be a float tensor \[T,32,12\]"):
        save_motion_tokens(tmp_path / "bad.safetensors", {"indices": idx, "codes": codes[:, :, :5], "config": TINY_TOK})
    with pytest.raises(InputError, match="9 frames of indices but 8 frames of codes"):
        save_motion_tokens(tmp_path / "bad.safetensors", {"indices": idx, "codes": codes[:8], "config": TINY_TOK})
    with pytest.raises(InputError, match=r"indices outside \[0, 1023\]"):
        save_motion_tokens(tmp_path / "bad.safetensors", {"indices": idx + 1024, "codes": codes, "config": TINY_TOK})
    with pytest.raises(InputError, match="missing"):
        save_motion_tokens(tmp_path / "bad.safetensors", {"indices": idx})
    assert not (tmp_path / "bad.safetensors").exists()
    b = save_bundle(IMAnimationBundle.build(BundleConfig(tokenizer=TINY_TOK)), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="not a motion-tokens file.*weights bundle"):
        load_motion_tokens(b)


def test_describe_file_kinds(tmp_path):
    b = save_bundle(perturbed(SMALL_ALL), tmp_path / "b.safetensors")
    info = describe_file(b)
    assert info["kind"] == "im-animation-bundle" and info["format_version"] == "1"
    assert set(info["parts"]) == set(BundleConfig.PARTS)
    assert info["config"]["tokenizer"]["width"] == 64 and info["config"]["tokenizer"]["encoder"] == "conv"
    assert json.loads(json.dumps(info)) == info  # JSON-able
    u = _write(tmp_path / "u.safetensors", {"a.b": torch.zeros(2, 3)}, {})
    info = describe_file(u)
    assert info["kind"] == "unknown" and info["num_params"] == 6 and info["dtypes"] == {"F32": 1}
    with pytest.raises(CheckpointError, match="does not exist"):
        describe_file(tmp_path / "missing.safetensors")
