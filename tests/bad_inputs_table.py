"""The bad inputs the project is tested against: one row per case, used by the tests and rendered into
docs/BAD_INPUTS.md.

Each row: ``id`` (the tests name it: ``tests/test_input_safety.py`` for the CLI and the core,
``tests/comfyui/test_nodes.py`` for the nodes), ``input``, ``host``, ``message`` (a part of the error that the
test asserts word for word, paths and counts left out; with ``literal=False``: a description of what the test
checks). ``test_input_safety.py`` checks that every row is used by a test and that docs/BAD_INPUTS.md is this
table. Regenerate the page with::

    .venv/bin/python tests/bad_inputs_table.py > docs/BAD_INPUTS.md
"""
from __future__ import annotations

CLI_EXIT = "exit code 2, one line `error: ...`, no traceback"

ROWS = [
    # ---------------------------------------------------------------- 1. no input is ever destroyed
    dict(id="animate-out-is-identity", host="CLI `animate`",
         input="`--out` = `--identity` (also written `sub/../id.png`)",
         message="is the --identity input"),
    dict(id="animate-out-symlink-to-driving", host="CLI `animate`",
         input="`--out` a symlink to the `--driving` video",
         message="is the --driving input"),
    dict(id="animate-out-hardlink-to-dit", host="CLI `animate`",
         input="`--out` a hard link to the `--dit` file",
         message="(hard links to one file)"),
    dict(id="encode-out-is-checkpoint", host="CLI `encode-motion`",
         input="`--out` = `--checkpoint` (the model bundle)",
         message="is the --checkpoint input"),
    dict(id="encode-out-is-driving", host="CLI `encode-motion`",
         input="`--out` = `--driving`",
         message="is the --driving input"),
    dict(id="demo-out-is-bundle", host="CLI `demo`",
         input="`--out` = `--bundle` (a file where a folder is expected, and an input)",
         message="is the --bundle input"),
    dict(id="demo-out-holds-input", host="CLI `demo`",
         input="`--out DIR` with `--vae DIR/result.mp4`",
         message="writing result.mp4 there would destroy the --vae input"),
    dict(id="train-out-is-init", host="CLI `train`",
         input="`--out` = the `--init` run folder",
         message="is the --init input"),
    dict(id="train-export-over-dit", host="CLI `train`",
         input="`--out DIR` with `--dit DIR/export/dit.safetensors`",
         message="writing export/dit.safetensors there would destroy the --dit input"),
    dict(id="train-out-inside-data", host="CLI `train`",
         input="`--out` inside the `--data` folder",
         message="is inside the --data folder"),
    dict(id="train-dry-run-out-is-init", host="CLI `train --dry-run`",
         input="`--dry-run` with `--out` = the `--init` run folder (a dry run says what the run would refuse)",
         message="is the --init input"),
    # ---------------------------------------------------------------- 2. output paths, checked first
    dict(id="animate-out-is-folder", host="CLI `animate`",
         input="`--out` an existing folder",
         message="is a folder; expected a file name such as out.mp4"),
    dict(id="encode-out-is-folder", host="CLI `encode-motion`",
         input="`--out` an existing folder",
         message="is a folder; expected a file name such as tokens.safetensors"),
    dict(id="out-parent-is-file", host="CLI `animate`",
         input="`--out FILE/out.mp4` (the parent is a file)",
         message="is a file, not a folder"),
    dict(id="out-folder-unwritable", host="CLI `animate`",
         input="`--out` in a folder that cannot be written",
         message="cannot write in the folder"),
    dict(id="demo-out-is-file", host="CLI `demo`",
         input="`--out FILE` (a file where a folder is expected)",
         message="is a file; expected a folder"),
    dict(id="out-checked-first", literal=False, host="CLI (all of the above)",
         input="any refused `--out`",
         message="refused before torch is imported (well under a second); no file or folder is created"),
    dict(id="inspect-closed-pipe", literal=False, host="CLI `inspect`",
         input="`inspect FILE | head -1` (stdout closed early)",
         message="nothing on stderr, exit code 141 (as SIGPIPE)"),
    dict(id="bundle-is-folder", host="CLI `animate`",
         input="`--bundle DIR` (also `--dit DIR`, `--vae DIR`)",
         message="is a folder; expected the"),
    dict(id="dit-image-to-video", host="CLI `animate`",
         input="`--dit` an image-to-video Wan DiT (36 input channels)",
         message="expected a text-to-video Wan 2.1 model (16 input channels); this one takes 36 "
                 "(an image-to-video / control variant)"),
    dict(id="node-dit-image-to-video", host="node *IM-Animation Sampler*",
         input="MODEL: an image-to-video Wan DiT (36 input channels)",
         message="expected a text-to-video Wan 2.1 model (16 input channels); this one takes 36 "
                 "(an image-to-video / control variant)"),
    # ---------------------------------------------------------------- 3. non-finite values
    dict(id="identity-nan", host="CLI `animate`",
         input="identity: a float TIFF with a NaN",
         message="the pixel values contain NaN or infinite numbers"),
    dict(id="driving-nan", host="CLI `animate` / `encode-motion`",
         input="driving: a folder of float TIFFs with a NaN",
         message="the pixel values contain NaN or infinite numbers"),
    dict(id="pipeline-driving-nan", host="core `pipeline.run`",
         input="driving: float frames with a NaN",
         message="driving: the pixel values contain NaN or infinite numbers"),
    dict(id="codes-nan", host="core / node *Load Motion Tokens*",
         input="motion-tokens file or MOTION_TOKENS with a NaN code",
         message="the motion-token codes contain NaN or infinite numbers"),
    dict(id="bundle-weights-nan", host="CLI `animate`, `encode-motion`; node *Load IM-Animation Models*",
         input="bundle with a NaN weight",
         message="has NaN or infinite values"),
    dict(id="released-weights-nan", host="core `load_bundle` (released motion encoder)",
         input="released encoder file with an Inf weight",
         message="has NaN or infinite values"),
    dict(id="dit-weights-nan", host="CLI `animate`",
         input="`--dit` with a NaN weight",
         message="has NaN or infinite values"),
    dict(id="vae-weights-nan", host="CLI `animate`",
         input="`--vae` with a NaN weight",
         message="has NaN or infinite values"),
    dict(id="sampling-nan", host="core `pipeline.run`",
         input="a DiT that produces NaN (weights changed in memory)",
         message="sampling: the denoised latent values contain NaN or infinite numbers"),
    dict(id="node-driving-nan", host="node *Encode Motion Tokens*",
         input="driving IMAGE with a NaN",
         message="driving: the pixel values contain NaN or infinite numbers"),
    dict(id="node-identity-nan", host="node *Retarget to Identity*",
         input="identity IMAGE with an Inf",
         message="identity: the pixel values contain NaN or infinite numbers"),
    dict(id="node-codes-nan", host="node *Retarget to Identity*",
         input="MOTION_TOKENS with a NaN code",
         message="the motion-token codes contain NaN or infinite numbers"),
    dict(id="node-bundle-nan", host="node *Load IM-Animation Models*",
         input="bundle file with a NaN weight",
         message="has NaN or infinite values"),
    dict(id="node-vae-nan", host="node *Retarget to Identity* (stock *Load VAE*)",
         input="VAE file with NaN weights",
         message="vae: the identity latent values contain NaN or infinite numbers"),
    dict(id="node-dit-nan", host="node *IM-Animation Sampler* (stock *Load Diffusion Model*)",
         input="DiT file with NaN weights",
         message="model: the sampled latent values contain NaN or infinite numbers"),
    # ---------------------------------------------------------------- 4. the two hosts agree
    dict(id="rgba-identity", literal=False, host="CLI and core (`io.video.read_image`, `checks.image_batch`)",
         input="RGBA identity",
         message="composited over black (rgb x alpha), the same in both (within 1/255)"),
    dict(id="node-rgba-identity", literal=False, host="node *Retarget to Identity* vs CLI",
         input="RGBA identity IMAGE vs the same RGBA PNG file",
         message="composited over black (rgb x alpha), the same in both (within 1/255)"),
    dict(id="identity-too-small", host="CLI `animate`",
         input="identity 40x12 px",
         message="smaller than the 16 px needed on each side"),
    dict(id="node-identity-too-small", host="node *Retarget to Identity*",
         input="identity IMAGE 40x12 px",
         message="smaller than the 16 px needed on each side"),
    dict(id="driving-too-small", host="CLI `encode-motion`, `animate`",
         input="driving video of 12x12 px frames",
         message="smaller than the 16 px needed on each side"),
    dict(id="train-data-missing", host="CLI `train`",
         input="`--data /missing`",
         message="does not exist; expected a video folder"),
    dict(id="train-failed-run-folders", host="CLI `train`",
         input="a run that fails after creating its run folders (an empty `--data` folder): they are removed, "
               "a folder that existed before stays",
         message="video folder"),
]

BY_ID = {r["id"]: r for r in ROWS}
assert len(BY_ID) == len(ROWS), "duplicate row ids"


def message(row_id: str) -> str:
    return BY_ID[row_id]["message"]


def render() -> str:
    lines = [
        "# Bad inputs the project is tested against",
        "",
        "Generated from `tests/bad_inputs_table.py` (`.venv/bin/python tests/bad_inputs_table.py > "
        "docs/BAD_INPUTS.md`); `tests/test_input_safety.py` fails when this page and the table differ or when a "
        "row has no test. *Message* in `code` is the part of the error the test checks word for word (paths and "
        "counts left out); in plain text, what the test checks.",
        "",
        f"CLI errors: {CLI_EXIT}; the input files are left untouched. Node errors: a node error in ComfyUI naming "
        "the input. The rules themselves: `imanim_core/io/paths.py` (output paths) and `imanim_core/checks.py` "
        "(NaN / Inf, minimum size, RGBA, Wan DiT variant).",
        "",
        "| input | host | message | test id |",
        "|---|---|---|---|",
    ]
    for r in ROWS:
        msg = r["message"].replace("|", "\\|")
        if r.get("literal", True):
            msg = f"`{msg}`"
        cell = {k: r[k].replace("|", "\\|") for k in ("input", "host")}
        lines.append(f"| {cell['input']} | {cell['host']} | {msg} | `{r['id']}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
