"""Start a ComfyUI checkout's main.py for the tests (test harness only, never shipped with the nodes).

Usage: python launch.py COMFYUI_DIR [main.py arguments...]

ComfyUI imports torchvision; on a CPU-only torch whose torchvision C++ ops do not load, torchvision's import
fails while registering fake kernels for ``torchvision::nms``/``qnms``. Declaring those two op schemas first
makes the import succeed (nothing here ever calls them). This is done only in this launcher.
"""
import os
import runpy
import sys


def declare_torchvision_ops() -> None:
    """Declare ``torchvision::nms``/``qnms`` when torchvision's compiled ops cannot be loaded (idempotent)."""
    import glob
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return  # no torchvision: nothing to fix
    libs = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so")) + \
        glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.pyd"))
    try:
        if libs:
            torch.ops.load_library(libs[0])
            return  # the real ops load: leave them alone
    except Exception:  # noqa: BLE001 - e.g. a CUDA-linked build on a CPU-only torch
        pass
    if globals().get("_TV_LIB") is not None:
        return
    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_TV_LIB"] = lib  # keep the library alive
    except Exception as e:  # noqa: BLE001
        print(f"[launch] torchvision op schemas not declared: {e}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: launch.py COMFYUI_DIR [args...]")
    comfy_dir = os.path.abspath(sys.argv[1])
    main_py = os.path.join(comfy_dir, "main.py")
    if not os.path.isfile(main_py):
        raise SystemExit(f"no main.py in {comfy_dir}")
    declare_torchvision_ops()
    sys.argv = [main_py] + sys.argv[2:]
    sys.path.insert(0, comfy_dir)
    os.chdir(comfy_dir)
    runpy.run_path(main_py, run_name="__main__")


if __name__ == "__main__":
    main()
