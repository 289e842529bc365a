"""Write imanim_core/weights/TRAINING.md from a finished scripts/train_tiny_default.sh run (its summary.json files).

    .venv/bin/python scripts/training_record.py runs/tiny [--wall SECONDS]
"""
import json
import sys
from pathlib import Path

STAGES = [("vae (TAEHV layout, 9-frame clips, 64-px crops, bf16)", "vae"), ("stage1", "s1"),
          ("stage1 --decoder-only (tokenizer frozen)", "s1b"), ("stage2", "s2"), ("stage3", "s3"),
          ("skeleton baseline", "skeleton"), ("vae --decoder-only --latent-noise 0.1 (encoder frozen)", "vaedec")]
SHOW = ["loss", "l1", "psnr", "latent_std", "heatmap", "anchor", "kp_err", "code_usage", "flow", "vq"]


def main(argv):
    run = Path(argv[0] if argv else "runs/tiny")
    wall = None
    if "--wall" in argv:
        wall = float(argv[argv.index("--wall") + 1])
    rows = []
    for name, sub in STAGES:
        f = run / sub / "summary.json"
        if not f.is_file():
            rows.append(f"| {name} | — | — | — | not run |")
            continue
        s = json.loads(f.read_text())
        # the latest checkpoint holds the whole run's training time and last losses, also across resumes
        ckpts = sorted((run / sub / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        state = json.loads((ckpts[-1] / "state.json").read_text()) if ckpts else {}
        seconds = float(state.get("elapsed", s.get("seconds_total", s["seconds"])))
        final = s["final_losses"] or state.get("last_losses", {})
        losses = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if k in SHOW)
        rows.append(f"| {name} | {s['step']} | {seconds / 60:.1f} | {s['step'] / seconds:.2f} | {losses} |")
    out = Path(__file__).resolve().parents[1] / "imanim_core" / "weights" / "TRAINING.md"
    n = run / "NOTES.md"  # how this particular run deviated from a plain run of the script, if it did
    notes = "\n" + n.read_text() if n.is_file() else ""
    g = run / "eval" / "gates.md"
    gates = g.read_text().split("\n", 2)[-1] if g.is_file() else "(not run: `eval --stages` writes DIR/eval/gates.md)\n"
    text = f"""# How the embedded tiny model was trained

Command (seeded, resumable; two single-thread processes side by side on a 2-core CPU, no GPU):

```bash
scripts/train_tiny_default.sh runs/tiny
```

It runs `train vae` ‖ `train stage1` → `train stage1 --decoder-only`, then `train stage2` → `train stage3` ‖ the
skeleton baseline (`python -m imanim_core baseline train`, the stage-3 recipe with the same steps) → `train vae
--decoder-only --latent-noise 0.1` (the VAE's encoder, and so the latent space stages 2-3 trained on, stays fixed),
all with `--preset tiny-puppet --seed 0 --threads 1`, installs the stage-3 export with the decoder-only VAE (fp16;
the VAE's `decoder.1.weight` stays fp32, see `save_vae`) and the baseline, and ends with
`python -m imanim_core eval --stages` (the gate table below). Wall time of the whole command:
{f'{wall / 60:.1f} min' if wall else 'the critical path of the table (vae ‖ stage 1 + decoder phase, then the longer of stage 2 + stage 3 and skeleton + VAE decoder phase)'}.
Minutes are training time from the checkpoints, summed over resumes.

| Stage | Steps | Minutes | Steps/s | Final logged losses |
|---|---|---|---|---|
""" + "\n".join(rows) + """

Files: `diffusion_models/imanim_tiny_dit.safetensors` (fp16 tiny Wan DiT, dim 256, 4 layers, original Wan
layout), `vae/imanim_tiny_vae.safetensors` (fp16 tiny video VAE in the TAEHV layout, Wan 2.1 latent space; ComfyUI's
stock *Load VAE* reads it), `im_animation/imanim_tiny.safetensors` (fp16: conv motion tokenizer + motion decoder +
joint head + retargeter + injector), `baselines/skeleton/` (the explicit baseline of `eval`: skeleton encoder +
injector, and its own DiT; it shares the VAE).

Video grid 128×128 (latent 16×16, DiT grid 8×8), clips of 9 frames, tokenizer 64 px, zero text.
""" + notes + """
## Per-stage gates (`python -m imanim_core eval --stages`, held-out puppet data)

""" + gates + """
Quality in full: the README's benchmark section (`python -m imanim_core eval`).
"""
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
