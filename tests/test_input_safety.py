"""Nothing lost, nothing silent: output paths checked first and never onto an input, NaN / Inf refused, the two
hosts agree on inputs. One test per row of tests/bad_inputs_table.py (rendered in docs/BAD_INPUTS.md); the
node rows are tested in tests/comfyui/test_nodes.py.

The CLI runs in-process through ``imanim_core.cli.main`` (plus two subprocesses: the import-free refusal and
the closed pipe), on tiny random models; no test samples more than one step at 32x32 px.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bad_inputs_table import BY_ID, ROWS, message, render  # noqa: E402

from imanim_core.cli import main  # noqa: E402
from imanim_core.errors import CheckpointError, InputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------ fixtures
def tiny_models(seed: int = 0):
    """(bundle, dit, vae): small random models (tiny Wan DiT with one block, the tiny video VAE)."""
    from imanim_core.backbone import wan
    from imanim_core.config import (BundleConfig, InjectorConfig, JointHeadConfig, MotionDecoderConfig,
                                    RetargeterConfig, TokenizerConfig)
    from imanim_core.models.bundle import IMAnimationBundle

    tok = TokenizerConfig.preset("tiny").replace(width=32, layers=1, heads=2, image_size=32, patch_size=8,
                                                 codebook_size=64)
    cfg = BundleConfig(tokenizer=tok,
                       motion_decoder=MotionDecoderConfig(width=32, layers=1, heads=2, grid=4, joint_dim=16),
                       joint_head=JointHeadConfig(joint_dim=16, hidden=16, upsample=2),
                       retargeter=RetargeterConfig(width=32, layers=1, heads=2, out_dim=16),
                       injector=InjectorConfig(in_dim=16, dit_dim=256, hidden=32))
    bundle = IMAnimationBundle.build(cfg, seed=seed).eval()
    dc = wan.dit_config("tiny")
    dc.update(num_layers=1, ffn_dim=256)
    torch.manual_seed(seed)
    dit = wan.build_dit(dc).eval()
    vae = wan.build_vae("tiny").eval()
    return bundle, dit, vae


def with_bad_value(src: Path, dst: Path, value=float("nan"), index: int = 3) -> Path:
    """A copy of a safetensors file with one float tensor's first value set to ``value`` (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(src))
    k = sorted(k for k, v in sd.items() if v.is_floating_point())[index]
    sd[k] = sd[k].clone()
    sd[k].view(-1)[0] = value
    save_file(sd, str(dst), metadata=meta)
    return dst


@pytest.fixture(scope="module")
def models():
    return tiny_models()


@pytest.fixture(scope="module")
def w(models, tmp_path_factory) -> dict:
    """Files: bundle, dit, vae, an RGBA identity PNG, a 5-frame driving mp4 (all small)."""
    import cv2

    from imanim_core.backbone import wan
    from imanim_core.io.video import write_video
    from imanim_core.models.bundle import save_bundle

    d = tmp_path_factory.mktemp("safety")
    bundle, dit, vae = models
    files = {"bundle": d / "bundle.safetensors", "dit": d / "dit.safetensors", "vae": d / "vae.safetensors",
             "identity": d / "id.png", "driving": d / "drv.mp4", "dir": d}
    save_bundle(bundle, files["bundle"], metadata={"video_size": "32x32"})
    wan.save_dit(dit, files["dit"])
    wan.save_vae(vae, files["vae"])
    rgba = np.random.default_rng(0).integers(0, 256, (40, 32, 4), dtype=np.uint8)
    cv2.imwrite(str(files["identity"]), rgba)
    write_video(files["driving"], np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), fps=8)
    return files


def model_args(w, **over) -> list:
    out = []
    for k in ("bundle", "dit", "vae"):
        out += [f"--{k}", str(over.get(k, w[k]))]
    return out


def digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def refused(capsys, argv, row_id: str, untouched=()) -> str:
    """Run the CLI; it must exit 2 with one line holding the row's message, and leave ``untouched`` as they
    were. Returns the error line."""
    before = {p: digest(p) for p in untouched}
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, (rc, err)
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and message(row_id) in last, last
    assert "Traceback" not in err
    for p, h in before.items():
        assert digest(p) == h, f"{p} was changed"
    return last


def listing(folder: Path) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------- the table itself
def test_doc_table_is_generated_from_the_rows():
    doc = REPO / "docs" / "BAD_INPUTS.md"
    assert doc.is_file(), "docs/BAD_INPUTS.md is missing: .venv/bin/python tests/bad_inputs_table.py > it"
    assert doc.read_text() == render(), "docs/BAD_INPUTS.md is stale: .venv/bin/python tests/bad_inputs_table.py > it"


def test_every_row_has_a_test():
    src = Path(__file__).read_text() + (REPO / "tests" / "comfyui" / "test_nodes.py").read_text()
    missing = [r["id"] for r in ROWS if f'"{r["id"]}"' not in src]
    assert not missing, f"rows without a test: {missing}"


# ------------------------------------------------------------------------ 1. no input is ever destroyed
def test_animate_out_onto_identity_is_refused(w, tmp_path, capsys):
    run = ["animate", "--identity", w["identity"], "--driving", w["driving"], "--steps", "1"] + model_args(w)
    refused(capsys, run + ["--out", w["identity"]], "animate-out-is-identity", untouched=[w["identity"]])
    (w["dir"] / "sub").mkdir(exist_ok=True)
    refused(capsys, run + ["--out", w["dir"] / "sub" / ".." / "id.png"], "animate-out-is-identity",
            untouched=[w["identity"]])


def test_animate_out_through_links_is_refused(w, tmp_path, capsys):
    link = tmp_path / "link.mp4"
    link.symlink_to(w["driving"])
    run = ["animate", "--identity", w["identity"], "--driving", w["driving"], "--steps", "1"] + model_args(w)
    line = refused(capsys, run + ["--out", link], "animate-out-symlink-to-driving", untouched=[w["driving"]])
    assert "both resolve to" in line
    hard = tmp_path / "hard.mp4"
    os.link(w["dit"], hard)
    refused(capsys, run + ["--out", hard], "animate-out-hardlink-to-dit", untouched=[w["dit"]])
    assert link.is_symlink()


def test_encode_motion_out_onto_its_inputs_is_refused(w, capsys):
    run = ["encode-motion", "--checkpoint", w["bundle"], "--driving", w["driving"]]
    refused(capsys, run + ["--out", w["bundle"]], "encode-out-is-checkpoint", untouched=[w["bundle"]])
    refused(capsys, run + ["--out", w["driving"]], "encode-out-is-driving", untouched=[w["driving"]])
    assert not Path(str(w["bundle"]) + ".partial").exists()


def test_demo_out_onto_its_inputs_is_refused(w, tmp_path, capsys):
    refused(capsys, ["demo", "--out", w["bundle"]] + model_args(w), "demo-out-is-bundle", untouched=[w["bundle"]])
    out = tmp_path / "demo"
    out.mkdir()
    vae = out / "result.mp4"  # an odd name for a VAE file, but an input all the same
    vae.write_bytes(Path(w["vae"]).read_bytes())
    refused(capsys, ["demo", "--out", out] + model_args(w, vae=vae), "demo-out-holds-input", untouched=[vae])
    assert listing(out) == ["result.mp4"]


def test_train_out_onto_its_inputs_is_refused(w, tmp_path, capsys):
    s2 = tmp_path / "s2"
    (s2 / "export").mkdir(parents=True)
    init = s2 / "export" / "bundle.safetensors"
    init.write_bytes(Path(w["bundle"]).read_bytes())
    refused(capsys, ["train", "stage3", "--init", s2, "--out", s2, "--vae", "random", "--max-steps", "1"],
            "train-out-is-init", untouched=[init])
    refused(capsys, ["train", "stage3", "--init", s2, "--out", s2 / "export" / "..", "--vae", "random"],
            "train-out-is-init", untouched=[init])
    s3 = tmp_path / "s3"
    (s3 / "export").mkdir(parents=True)
    dit = s3 / "export" / "dit.safetensors"
    dit.write_bytes(Path(w["dit"]).read_bytes())
    refused(capsys, ["train", "stage3", "--init", s2, "--dit", dit, "--out", s3, "--vae", "random", "--max-steps", "1"],
            "train-export-over-dit", untouched=[dit, init])
    data = tmp_path / "data"
    data.mkdir()
    refused(capsys, ["train", "stage1", "--data", data, "--out", data / "run", "--max-steps", "1"],
            "train-out-inside-data")
    refused(capsys, ["train", "stage3", "--init", s2, "--out", s2, "--vae", "random", "--dry-run"],
            "train-dry-run-out-is-init", untouched=[init])
    assert listing(data) == [] and listing(s3) == ["export", "export/dit.safetensors"]


# ------------------------------------------------------------------------ 2. output paths, checked first
def test_out_that_is_a_folder_is_refused(w, tmp_path, capsys):
    run = ["animate", "--identity", w["identity"], "--driving", w["driving"]] + model_args(w)
    refused(capsys, run + ["--out", tmp_path], "animate-out-is-folder")
    refused(capsys, ["encode-motion", "--checkpoint", w["bundle"], "--driving", w["driving"], "--out", tmp_path],
            "encode-out-is-folder")
    assert listing(tmp_path) == []


def test_out_under_a_file_or_an_unwritable_folder_is_refused(w, tmp_path, capsys):
    run = ["animate", "--identity", w["identity"], "--driving", w["driving"]] + model_args(w)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(capsys, run + ["--out", a_file / "out.mp4"], "out-parent-is-file", untouched=[a_file])
    if os.geteuid() == 0:  # root writes through permissions: use a folder nobody can create files in
        if not Path("/proc").is_dir():
            pytest.skip("running as root without /proc: no unwritable folder to test with")
        target = Path("/proc") / "imanim_test" / "out.mp4"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "new" / "out.mp4"
    try:
        line = refused(capsys, run + ["--out", target], "out-folder-unwritable")
        assert str(target) in line
    finally:
        if os.geteuid() != 0:
            (tmp_path / "ro").chmod(0o700)
            assert listing(tmp_path / "ro") == []


def test_demo_out_that_is_a_file_is_refused(w, tmp_path, capsys):
    f = tmp_path / "demo_out"
    f.write_text("not a folder")
    refused(capsys, ["demo", "--out", f] + model_args(w), "demo-out-is-file", untouched=[f])


def test_bad_out_is_refused_before_torch_is_imported(w, tmp_path):
    """The refusal comes from the CLI's preflight, before the command imports torch or loads anything: well
    under a second, whatever the models' size. A subprocess, so that torch is not already imported."""
    code = ("import sys\nfrom imanim_core.cli import main\n"
            f"rc = main(['animate', '--identity', {str(w['identity'])!r}, '--driving', {str(w['driving'])!r}, "
            f"'--out', {str(w['identity'])!r}])\n"
            "rc2 = main(['demo', '--out', sys.argv[1]])\n"
            "print(rc, rc2, 'torch' in sys.modules)\n")
    f = tmp_path / "file"
    f.write_text("x")
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.stdout.split() == ["2", "2", "False"], (r.stdout, r.stderr)
    assert message("animate-out-is-identity") in r.stderr and message("demo-out-is-file") in r.stderr
    assert BY_ID["out-checked-first"]
    assert listing(tmp_path) == ["file"]


def test_inspect_into_a_closed_pipe_is_quiet(w):
    """`inspect FILE | head -1`: the reader goes away before the output is written; no BrokenPipe traceback."""
    r = subprocess.Popen([sys.executable, "-m", "imanim_core", "inspect", str(w["bundle"])], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    r.stdout.close()  # closed before the child writes
    err = r.stderr.read().decode()
    rc = r.wait(timeout=120)
    assert err == "" and rc == 141, ("inspect-closed-pipe", rc, err)


@pytest.mark.parametrize("which", ["bundle", "dit", "vae"])
def test_model_file_that_is_a_folder_says_so(w, tmp_path, capsys, which):
    line = refused(capsys, ["animate", "--identity", w["identity"], "--driving", w["driving"], "--out",
                            tmp_path / "o.mp4"] + model_args(w, **{which: tmp_path}), "bundle-is-folder")
    assert f"--{which}" in line
    assert listing(tmp_path) == []


def test_image_to_video_dit_gets_the_nodes_explanation(w, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from imanim_core.backbone import wan

    dc = wan.dit_config("tiny")
    dc.update(num_layers=1, ffn_dim=256, in_channels=36, image_dim=64)
    torch.manual_seed(0)
    wan.save_dit(wan.build_dit(dc), tmp_path / "i2v_meta.safetensors")
    save_file(load_file(str(tmp_path / "i2v_meta.safetensors")), str(tmp_path / "i2v.safetensors"))  # no metadata
    line = refused(capsys, ["animate", "--identity", w["identity"], "--driving", w["driving"], "--out",
                            tmp_path / "o.mp4", "--steps", "1"] + model_args(w, dit=tmp_path / "i2v.safetensors"),
                   "dit-image-to-video")
    assert "i2v.safetensors" in line and len(line) < 300  # one line, no config dump
    assert not (tmp_path / "o.mp4").exists()


# ------------------------------------------------------------------------------------ 3. non-finite values
def _float_tiff(path: Path, h=32, w=32, bad=float("nan")) -> Path:
    import cv2

    a = np.random.default_rng(0).random((h, w, 3)).astype(np.float32)
    a[3, 3, 1] = bad
    assert cv2.imwrite(str(path), a)
    return path


def test_nan_identity_image_is_refused(w, tmp_path, capsys):
    ident = _float_tiff(tmp_path / "id.tif")
    line = refused(capsys, ["animate", "--identity", ident, "--driving", w["driving"], "--out", tmp_path / "o.mp4",
                            "--steps", "1"] + model_args(w), "identity-nan")
    assert "id.tif" in line and not (tmp_path / "o.mp4").exists()


def test_nan_driving_frames_are_refused(w, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        _float_tiff(frames / f"{i}.tif", bad=float("inf") if i else float("nan"))
    refused(capsys, ["animate", "--identity", w["identity"], "--driving", frames, "--out", tmp_path / "o.mp4",
                     "--steps", "1"] + model_args(w), "driving-nan")
    refused(capsys, ["encode-motion", "--checkpoint", w["bundle"], "--driving", frames, "--out",
                     tmp_path / "t.safetensors"], "driving-nan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_nan_driving_frames_in_the_pipeline_are_refused(models):
    from imanim_core import pipeline as P

    drv = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
    drv[2, 1, 1, 0] = np.nan
    ident = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(InputError) as e:
        P.run(ident, drv, *models, size=(32, 32), steps=1, progress=False)
    assert message("pipeline-driving-nan") in str(e.value)


def test_nan_motion_token_codes_are_refused(models, tmp_path):
    from safetensors.torch import save_file

    from imanim_core.models.bundle import check_motion_tokens, load_motion_tokens, save_motion_tokens

    tok = models[0].tokenizer
    k, d = tok.cfg.num_latent_tokens, tok.cfg.token_dim
    codes = torch.randn(3, k, d)
    codes[1, 2, 3] = float("nan")
    mt = {"indices": torch.zeros(3, k, dtype=torch.int64), "codes": codes, "config": tok.cfg, "fps": 8.0}
    with pytest.raises(InputError) as e:
        check_motion_tokens(mt)
    assert message("codes-nan") in str(e.value)
    with pytest.raises(InputError, match="NaN"):
        save_motion_tokens(tmp_path / "t.safetensors", mt)
    assert not (tmp_path / "t.safetensors").exists()
    good = dict(mt, codes=torch.randn(3, k, d))
    save_motion_tokens(tmp_path / "t.safetensors", good)  # a file damaged afterwards: refused when loaded
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        meta = f.metadata()
    save_file({"indices": mt["indices"], "codes": codes}, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError) as e:
        load_motion_tokens(tmp_path / "bad.safetensors")
    assert message("codes-nan") in str(e.value)


@pytest.mark.parametrize("which", ["bundle", "dit", "vae"])
def test_nan_weights_are_refused_at_load(w, tmp_path, capsys, which):
    bad = with_bad_value(w[which], tmp_path / f"nan_{which}.safetensors")
    row = {"bundle": "bundle-weights-nan", "dit": "dit-weights-nan", "vae": "vae-weights-nan"}[which]
    line = refused(capsys, ["animate", "--identity", w["identity"], "--driving", w["driving"], "--out",
                            tmp_path / "o.mp4", "--steps", "1"] + model_args(w, **{which: bad}), row)
    assert f"nan_{which}.safetensors" in line and not (tmp_path / "o.mp4").exists()
    if which == "bundle":
        refused(capsys, ["encode-motion", "--checkpoint", bad, "--driving", w["driving"], "--out",
                         tmp_path / "t.safetensors"], "bundle-weights-nan")
        assert not (tmp_path / "t.safetensors").exists()


def test_nonfinite_released_encoder_weights_are_refused(tmp_path, layout_tools):
    from safetensors.torch import save_file

    from imanim_core.config import TokenizerConfig
    from imanim_core.models.released import load_released_encoder, released_keys

    cfg = TokenizerConfig.preset("large").replace(width=32, layers=1, heads=2, mlp_ratio=2.0)
    sd = layout_tools.random_state(released_keys(cfg), torch.bfloat16)
    load_released_encoder(_save(save_file, sd, tmp_path / "ok.safetensors"), config=cfg)
    sd["encoder.ln_post.weight"] = sd["encoder.ln_post.weight"].clone()
    sd["encoder.ln_post.weight"][0] = float("inf")
    with pytest.raises(CheckpointError) as e:
        load_released_encoder(_save(save_file, sd, tmp_path / "bad.safetensors"), config=cfg)
    assert message("released-weights-nan") in str(e.value) and "encoder.ln_post.weight" in str(e.value)


def _save(save_file, sd, path):
    save_file(sd, str(path))
    return path


def test_a_dit_that_produces_nan_is_an_error_not_a_black_video(models):
    from imanim_core import pipeline as P

    bundle, dit, vae = models
    p = dit.proj_out.weight
    keep = p.detach().clone()
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    try:
        with pytest.raises(InputError) as e:
            P.run(np.zeros((32, 32, 3), np.uint8), np.zeros((5, 32, 32, 3), np.uint8), bundle, dit, vae,
                  size=(32, 32), steps=1, progress=False)
    finally:
        with torch.no_grad():
            p.copy_(keep)
    assert message("sampling-nan") in str(e.value)


# -------------------------------------------------------------------------------- 4. the hosts agree
def test_rgba_identity_is_composited_over_black_in_both_hosts(w):
    """The CLI reads an RGBA file with io.video.read_image; the nodes convert an RGBA IMAGE with
    checks.image_batch (nodes/common.check_image). Both: rgb * alpha."""
    import cv2

    from imanim_core.checks import image_batch
    from imanim_core.io.video import read_image

    bgra = cv2.imread(str(w["identity"]), cv2.IMREAD_UNCHANGED)
    rgba = cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA)
    cli = read_image(w["identity"]).astype(np.float32) / 255.0
    node = image_batch(torch.from_numpy(rgba).float()[None] / 255.0, "identity")[0].numpy()
    over_black = rgba[..., :3].astype(np.float32) / 255.0 * (rgba[..., 3:].astype(np.float32) / 255.0)
    assert np.abs(cli - over_black).max() <= 1 / 255 + 1e-6, "rgba-identity"
    assert np.abs(node - over_black).max() <= 1e-6
    assert np.abs(cli - node).max() <= 1 / 255 + 1e-6
    assert (rgba[..., 3] < 255).any() and (rgba[..., 3] > 0).any()  # the test image really has partial alpha


def test_identity_below_the_nodes_minimum_is_refused_by_the_cli(w, tmp_path, capsys):
    import cv2

    from imanim_core.checks import MIN_IMAGE_SIDE, image_batch

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((12, 40, 3), 200, np.uint8))
    refused(capsys, ["animate", "--identity", small, "--driving", w["driving"], "--out", tmp_path / "o.mp4",
                     "--steps", "1"] + model_args(w), "identity-too-small")
    with pytest.raises(InputError) as e:  # the node's check: the same words
        image_batch(torch.full((1, 12, 40, 3), 0.8), "identity")
    assert message("identity-too-small") in str(e.value) and MIN_IMAGE_SIDE == 16
    assert not (tmp_path / "o.mp4").exists()


def test_driving_frames_below_the_minimum_are_refused(w, tmp_path, capsys):
    from imanim_core.io.video import write_video

    tiny = tmp_path / "tiny.mp4"
    write_video(tiny, np.full((5, 12, 12, 3), 120, np.uint8), fps=8)
    refused(capsys, ["encode-motion", "--checkpoint", w["bundle"], "--driving", tiny,
                     "--out", tmp_path / "t.safetensors"], "driving-too-small")
    refused(capsys, ["animate", "--identity", w["identity"], "--driving", tiny, "--out", tmp_path / "o.mp4",
                     "--steps", "1"] + model_args(w), "driving-too-small")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.mp4"]


def test_train_with_missing_data_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "runs" / "s1"
    line = refused(capsys, ["train", "stage1", "--data", tmp_path / "missing", "--out", out, "--max-steps", "1"],
                   "train-data-missing")
    assert "missing" in line and listing(tmp_path) == []


def test_a_train_run_that_fails_removes_the_folders_it_created(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    out = tmp_path / "runs" / "s1"
    refused(capsys, ["train", "stage1", "--data", tmp_path / "data", "--out", out, "--max-steps", "1"],
            "train-failed-run-folders")
    assert listing(tmp_path) == ["data"]
    keep = tmp_path / "mine"
    keep.mkdir()  # a folder the user made stays, even empty
    refused(capsys, ["train", "stage1", "--data", tmp_path / "data", "--out", keep, "--max-steps", "1"],
            "train-failed-run-folders")
    assert listing(tmp_path) == ["data", "mine"]
