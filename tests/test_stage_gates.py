"""Per-stage gates (imanim_core.stage_gates) on untrained tiny models and on synthetic benchmark rows."""
from types import SimpleNamespace

import torch

from imanim_core import stage_gates as G
from imanim_core.backbone.wan import build_vae
from imanim_core.config import JointHeadConfig, MotionDecoderConfig, TokenizerConfig
from imanim_core.models.bundle import build_part


def test_vae_gates_fail_for_an_untrained_vae_and_name_the_baseline():
    torch.manual_seed(0)
    gates = G.vae_gates(build_vae("tiny").eval(), clips=1, frames=5, size=(64, 64))
    assert len(gates) == 6
    whole = gates[0]
    assert whole["gate"].startswith("vae: whole-frame PSNR") and whole["pass"] is False
    assert whole["baseline"] > 15.0 > whole["value"]  # 8x down + up beats random weights by far
    md = G.markdown(gates)
    assert "**no**" in md and md.count("\n") == len(gates) + 2


def test_stage1_gates_untrained_bundle_is_not_better_than_the_mean_pose():
    torch.manual_seed(0)
    tok = TokenizerConfig.preset("tiny")
    b = SimpleNamespace(tokenizer=build_part("tokenizer", tok).eval(),
                        motion_decoder=build_part("motion_decoder", MotionDecoderConfig()).eval(),
                        joint_head=build_part("joint_head", JointHeadConfig()).eval())
    err, usage = G.stage1_gates(b, frames=8)
    assert err["baseline"] > 0.5 and err["pass"] is False and err["value"] > 0.4 * err["baseline"]
    assert usage["pass"] is None and 0 < usage["value"] <= 1
    assert "| — |" in G.markdown([usage])


def test_stage3_gates_from_benchmark_rows():
    def rows(iou, psnr, still_iou, skel_iou):
        return {"im_animation": {"large": {"iou": iou, "psnr_char": psnr}},
                "identity_still": {"large": {"iou": still_iou, "psnr_char": 17.0}},
                "skeleton": {"large": {"iou": skel_iou}}}

    good = G.stage3_gates({"results": rows(0.8, 25.0, 0.4, 0.5)}, "large", motion_change=9.0, motion_change_floor=2.0)
    assert [g["pass"] for g in good] == [True, True, True, True, True]
    bad = G.stage3_gates({"results": rows(0.5, 20.0, 0.45, 0.6)}, "large", motion_change=1.0, motion_change_floor=2.0)
    assert [g["pass"] for g in bad] == [False, False, False, False, False]


def test_stage2_gates_report_how_much_the_retargeted_pose_moves():
    """The stage-2 motion row: 0 for a retargeter whose pose does not move, > 0 for the embedded one."""
    from imanim_core.backbone.wan import load_vae
    from imanim_core.models.bundle import load_bundle
    from imanim_core.weights import BUNDLE_FILE, VAE_FILE

    torch.manual_seed(0)
    bundle, vae = load_bundle(BUNDLE_FILE), load_vae(VAE_FILE)
    err, moved = G.stage2_gates(bundle, vae, clips=2, frames=5)
    assert err["gate"].startswith("stage2: cross-identity") and err["baseline"] > 0
    assert moved["pass"] is None and moved["value"] > 0.01, moved
    ret = bundle.retargeter
    still = SimpleNamespace(tokenizer=bundle.tokenizer, joint_head=bundle.joint_head,
                            retargeter=lambda idl, codes: (lambda y: y[:, :1].expand_as(y))(ret(idl, codes)))
    _, frozen = G.stage2_gates(still, vae, clips=2, frames=5)
    assert frozen["value"] < 1e-4, frozen
