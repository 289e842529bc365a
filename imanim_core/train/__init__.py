"""Staged training (DESIGN §2): ``python -m imanim_core train vae|stage1|stage2|stage3``.

- ``vae.py``     the tiny video VAE (tiny preset only) -> ``export/vae.safetensors`` (TAEHV layout, fp32)
- ``stage1.py``  tokenizer + motion decoder + joint head on pose heatmaps -> ``export/bundle.safetensors``
- ``stage2.py``  retargeter (+ joint head) with heatmap supervision, codebook frozen -> bundle + manifest (VAE)
- ``stage3.py``  Wan DiT (full / adapter / LoRA) + injector (+ retargeter) by flow matching with the reference
  frame appended in time -> bundle (5 parts), ``dit.safetensors`` (original layout), ``vae.safetensors``
- ``loop.py``    the shared loop, ``Trainer`` (Accelerate: DDP/FSDP, mixed precision, accumulation, Ctrl-C),
  with ``stage.py`` (the ``Stage`` API), ``seeding.py`` (seeds and RNG states: exact resume), ``losses.py``,
  ``optim.py`` (EMA, lr schedule), ``checkpoint.py`` (the checkpoint format), ``runtime.py`` (data loading,
  ``log.csv``, Accelerator), ``inputs.py`` (``--init``/``--vae``); ``common.py`` re-exports them in one import;
  ``skeleton.py`` (the skeleton baseline's stage), ``config.py`` (``TrainConfig`` and the presets), ``data.py``
  (puppet world / video folder and the heatmap targets), ``cli.py`` (the command), ``accelerate/*.yaml``.

Typical tiny run (each stage picks up the previous one through ``--init``)::

    python -m imanim_core train vae    --out runs/vae
    python -m imanim_core train stage1 --out runs/s1
    python -m imanim_core train stage2 --init runs/s1 --vae runs/vae --out runs/s2
    python -m imanim_core train stage3 --init runs/s2 --out runs/s3
"""
