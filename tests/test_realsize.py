"""The real-size helpers (imanim_core/realsize.py) and `bench retargeter|train-cost` — fast checks only.

The real-size smoke itself (random 1.3B weights through ComfyUI and stage-3 training) is a benchmark command, not
part of this suite: tests/comfyui/bench_real_size.py, or tests/comfyui/test_real_size.py with IMANIM_REAL_SIZE=1.
"""
import json
import subprocess
import sys

import torch

from imanim_core.backbone.convert import dit_diffusers_to_original
from imanim_core.backbone.wan import build_dit, dit_config
from imanim_core.realsize import (
    dit_step_flops,
    random_bundle,
    real_bundle_config,
    retargeter_flops,
    training_step_flops,
)


def test_dit_step_flops_match_the_issue_estimate():
    f = dit_step_flops(dit_config("wan2.1-t2v-1.3b"), 21, 60, 104, text_len=512)
    assert f["tokens"] == 21 * 30 * 52 == 32760
    assert 280e12 < f["total"] < 290e12  # ~283 TFLOP per forward
    ref = dit_step_flops(dit_config("wan2.1-t2v-1.3b"), 21, 60, 104, text_len=512, reference_frames=1)
    assert ref["tokens"] == 22 * 30 * 52 and ref["total"] > f["total"]


def test_retargeter_flops_below_ten_percent_of_a_dit_step():
    dit = dit_step_flops(dit_config("wan2.1-t2v-1.3b"), 21, 60, 104)["total"]
    from imanim_core.config import RetargeterConfig

    assert 3.2e12 < retargeter_flops(RetargeterConfig(), 60, 104, 81) < 3.4e12  # the docstring's ~3.3 TFLOP
    real = retargeter_flops(real_bundle_config(1536).retargeter, 60, 104, 81)
    assert real / dit < 0.10


def test_random_dit_has_the_released_1_3b_layout():
    from imanim_core.realsize import random_dit

    dit = random_dit()  # pooled values: fast even at 1.4B parameters
    with torch.device("meta"):
        ref = build_dit("wan2.1-t2v-1.3b")
    sd = dit.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    orig = dit_diffusers_to_original({k: v.shape for k, v in sd.items()})
    assert tuple(orig["patch_embedding.weight"]) == (1536, 16, 1, 2, 2) and len(orig) == 825
    assert float(sd["blocks.0.norm2.weight"].float().mean()) == 1.0
    assert float(sd["blocks.0.ffn.net.0.proj.weight"].float().std()) > 0.01


def test_random_bundle_sizes():
    b = random_bundle(1536)
    assert b.config.injector.dit_dim == 1536 and b.config.retargeter.width == 512
    assert b.config.tokenizer.width == 1024 and b.config.tokenizer.layers == 24  # the released layout
    assert float(b.injector.fc2.weight.detach().abs().sum()) > 0  # motion changes the result
    assert float(b.tokenizer.encoder.ln_pre.weight.mean()) == 1.0


def test_training_step_flops_stage3_is_dominated_by_the_dit():
    r = training_step_flops("stage3")
    dit = next(v for k, v in r["parts"].items() if k.startswith("DiT"))
    assert 0.7 < dit / r["total"] < 0.9


def test_bench_train_cost_and_retargeter_flops_only():
    r = subprocess.run([sys.executable, "-m", "imanim_core", "bench", "train-cost", "--json"], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert [s["stage"] for s in json.loads(r.stdout)["stages"]] == ["stage1", "stage2", "stage3"]
    r = subprocess.run([sys.executable, "-m", "imanim_core", "bench", "retargeter", "--dit-blocks", "0", "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["retargeter"]["real"]["flops_ratio_to_dit_step"] < 0.10
