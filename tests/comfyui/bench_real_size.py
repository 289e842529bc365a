"""Real-size smoke (a benchmark that prints numbers; opt-in, not in the default suite): Wan 2.1 T2V 1.3B-shaped
random weights through the shipped ``wan21_1.3b`` workflow in a real headless ComfyUI, then stage-3 training.

Usage (ComfyUI's Python, as the tests run it; ~11 GB of RAM, ~10 GB of disk in a temp folder: weights 3.7 GB, each training run exports a 2.6 GB DiT):

    .venv-comfyui/bin/python tests/comfyui/bench_real_size.py [--weights DIR] [--keep] [--skip-train] [--json FILE]

1. Weights (``imanim_core/realsize.py``, written at run time into a temp folder, never committed): the Wan 2.1
   T2V 1.3B DiT with the exact keys/shapes of the released file (original layout, bf16, 2.6 GiB), the Wan 2.1
   VAE (real architecture, random init, bf16) and a bundle with the released-layout ``large`` tokenizer plus the
   ``real`` preset's motion decoder, joint head, retargeter (width 512, 8 layers) and an injector for width 1536.
   ``--weights DIR`` reuses (or fills) a folder with ComfyUI's subfolders instead.
2. ``workflows/wan21_1.3b.json``, converted to the API format by ``workflow_api.py`` and changed only where it
   must be for this machine: the model file names, a 128x128 character image and a 9-frame 128x128 driving video
   (puppet world) in ``input/``, the Retarget size 128x128, 2 sampler steps, and no text encoder: *Load CLIP* and
   the two *CLIP Text Encode* nodes are removed (a random umT5-XXL would be 11 GB; the sampler then uses zero
   text for both CFG branches — it still runs cfg 5 as two batched passes). Everything else runs as shipped:
   *Load IM-Animation Models*, stock *Load Diffusion Model* and *Load VAE*, *Encode Motion Tokens*, *Retarget to
   Identity*, *IM-Animation Sampler* (uni_pc, simple, shift 5), stock *VAE Decode*, *ImageFromBatch*, the side-by-side
   and pose videos (*ImageStitch*, *Create Video*, *Save Video*).
   It runs twice, each time in a **fresh server** (so nothing is cached and each run's memory is its own): with the
   stock loader's ``weight_dtype`` ``default`` and ``fp8_e4m3fn``.
3. Unless ``--skip-train``: ``python -m imanim_core bench real-size --weights DIR`` (with the project's ``.venv``
   Python when there is one): ``train stage3 --preset real`` with ``--dit-training adapter`` and ``lora`` for 2
   steps on a tiny video folder, with these weights.

How the numbers are taken:
- **seconds per node**: the driver listens on ComfyUI's websocket (``/ws?clientId=...``); a node's time runs from
  its ``executing`` message to the next ``executing`` (or ``execution_success``) message, stamped on arrival.
  It includes the input gathering of the next node (negligible here).
- **memory per node**: the server process's resident set (``VmRSS`` of ``/proc/PID/status``) is sampled every
  20 ms; a node's *peak* is the largest sample while it ran, *start* the sample before it. The run's peak is the
  server's ``VmHWM`` (kernel high-water mark) when it ends. RSS is what a CPU run costs; on a GPU the weights would
  sit in VRAM instead (``scripts/gpu_bench.py`` measures that).

Prints a table per run and the totals; ``--json FILE`` writes everything. Exit code 0 only when every prompt and
both training runs succeeded and every output has the expected shape (9 frames of 128x128 from *VAE Decode*).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness
from workflow_api import ui_to_api

REPO = harness.REPO
WORKFLOW = REPO / "workflows" / "wan21_1.3b.json"
SIZE, FRAMES, STEPS = 128, 9, 2
TEXT_NODES = ("CLIPLoader", "CLIPTextEncode")


def log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ inputs and weights
def make_weights_and_inputs(models: Path, inputs: Path) -> dict:
    """Random real-size weights into ``models`` and a character image / driving video into ``inputs`` (a helper
    process with ComfyUI's Python: torchvision's op schemas are declared first, see launch.py)."""
    code = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
from launch import declare_torchvision_ops
declare_torchvision_ops()
from imanim_core.realsize import write_random_weights
files = write_random_weights({str(models)!r}, log=lambda s: print(s, file=sys.stderr, flush=True))
from pathlib import Path
from PIL import Image
from imanim_core.data.video_folder import write_puppet_video_folder
from imanim_core.io.video import read_video
inp = Path({str(inputs)!r}); inp.mkdir(parents=True, exist_ok=True)
root = write_puppet_video_folder(inp / "_puppets", num_clips=2, frames={FRAMES}, size=({SIZE}, {SIZE}), seed=7)
import shutil
shutil.copy(root / "clip_0000" / "video.mp4", inp / "dance.mp4")
frames, _ = read_video(root / "clip_0001" / "video.mp4")
Image.fromarray(frames[0]).save(inp / "character.png")
print(json.dumps(files))
"""
    t0 = time.perf_counter()
    r = subprocess.run([harness.comfy_python(), "-c", code], capture_output=True, text=True,
                       env=harness.subprocess_env(), cwd=str(HERE), check=False)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise SystemExit(f"writing the random weights failed:\n{r.stdout[-2000:]}")
    files = json.loads(r.stdout.strip().splitlines()[-1])
    files["seconds"] = time.perf_counter() - t0
    return files


def build_prompt(object_info: dict, files: dict, weight_dtype: str) -> dict:
    """The shipped wan21_1.3b workflow in API format, changed only as the module docstring says."""
    p = ui_to_api(json.loads(WORKFLOW.read_text()), object_info)
    text_ids = {i for i, n in p.items() if n["class_type"] in TEXT_NODES}
    for i in text_ids:
        del p[i]
    for n in p.values():
        ins, ct = n["inputs"], n["class_type"]
        for k in [k for k, v in ins.items() if isinstance(v, list) and v and v[0] in text_ids]:
            del ins[k]  # the sampler's optional positive/negative: zero text when absent
        if ct == "UNETLoader":
            ins.update(unet_name=Path(files["dit"]).name, weight_dtype=weight_dtype)
        elif ct == "VAELoader":
            ins["vae_name"] = Path(files["vae"]).name
        elif ct == "IMAnimationLoadModels":
            ins["bundle"] = Path(files["bundle"]).name
        elif ct == "IMAnimationRetarget":
            ins.update(width=SIZE, height=SIZE)
        elif ct == "IMAnimationSampler":
            ins["steps"] = STEPS
        elif ct == "LoadImage":
            ins["image"] = "character.png"
        elif ct == "LoadVideo":
            ins["file"] = "dance.mp4"
        elif ct == "SaveVideo":
            ins["filename_prefix"] = ins["filename_prefix"] + "_" + weight_dtype
    # what the smoke checks: the decoded frames (a preview of VAE Decode's output is not saved by the workflow)
    dec = next(i for i, n in p.items() if n["class_type"] == "VAEDecode")
    p["smoke_shape"] = {"class_type": "PreviewImage", "inputs": {"images": [dec, 0]}}
    return p


# ----------------------------------------------------------------------------------------------- measurement
class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.stop = pid, every, [], threading.Event()
        self.hwm = 0

    def read(self):
        try:
            rss = hwm = 0
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
                    elif line.startswith("VmHWM:"):
                        hwm = int(line.split()[1]) * 1024
            return rss, hwm
        except OSError:
            return None

    def run(self):
        while not self.stop.is_set():
            r = self.read()
            if r:
                self.samples.append((time.time(), r[0]))
                self.hwm = max(self.hwm, r[1])
            time.sleep(self.every)

    def peak(self, t0: float, t1: float) -> int:
        """The largest sample in [t0, t1], at least the last one before t0 (a node shorter than one interval)."""
        return max([r for t, r in self.samples if t0 <= t <= t1] + [self.before(t0)])

    def before(self, t0: float) -> int:
        prev = [r for t, r in self.samples if t <= t0]
        return prev[-1] if prev else 0


class Events(threading.Thread):
    """ComfyUI's websocket messages for one client id, stamped on arrival."""

    def __init__(self, url: str, client_id: str):
        super().__init__(daemon=True)
        self.url, self.client_id, self.events, self.ready = url, client_id, [], threading.Event()
        self.failed = None

    def run(self):
        import aiohttp

        async def main():
            url = f"{self.url.replace('http', 'ws', 1)}/ws?clientId={self.client_id}"
            async with aiohttp.ClientSession() as s, s.ws_connect(url, max_msg_size=0, heartbeat=30) as ws:
                self.ready.set()
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        m = json.loads(msg.data)
                        self.events.append((time.time(), m.get("type"), m.get("data") or {}))
        try:
            asyncio.run(main())
        except Exception as e:  # noqa: BLE001
            self.failed = e
            self.ready.set()


def run_workflow(base: Path, files: dict, weight_dtype: str, timeout: float) -> dict:
    client = harness.start_server(base)
    rss = RssSampler(client.proc.pid)
    rss.start()
    try:
        prompt = build_prompt(client.object_info, files, weight_dtype)
        titles = {i: n.get("_meta", {}).get("title", n["class_type"]) for i, n in prompt.items()}
        cid = uuid.uuid4().hex
        ev = Events(client.url, cid)
        ev.start()
        ev.ready.wait(30)
        if ev.failed:
            raise SystemExit(f"websocket: {ev.failed}")
        rss_idle = rss.read()[0]
        t_queue = time.time()
        status, body = client.post("/prompt", {"prompt": prompt, "client_id": cid})
        if status != 200:
            raise SystemExit(f"/prompt refused the prompt: {json.dumps(body)[:3000]}")
        hist = client.wait(body["prompt_id"], timeout)
        t_done = time.time()
        time.sleep(0.3)  # the last websocket messages
        ok = hist.get("status", {}).get("status_str") == "success"
        # node intervals from the executing messages
        marks = [(t, d.get("node")) for t, typ, d in ev.events if typ == "executing" and d.get("node")]
        end = next((t for t, typ, _ in ev.events if typ in ("execution_success", "execution_error")), t_done)
        nodes = []
        for i, (t, nid) in enumerate(marks):
            t1 = marks[i + 1][0] if i + 1 < len(marks) else end
            nodes.append({"node": nid, "class_type": prompt[nid]["class_type"], "title": titles.get(nid),
                          "seconds": t1 - t, "rss_start_gb": rss.before(t) / 2**30,
                          "rss_peak_gb": rss.peak(t, t1) / 2**30})
        shape = None
        out = hist.get("outputs", {}).get("smoke_shape", {}).get("images", [])
        if out:
            shape = len(out)
        errors = harness.messages(hist, "execution_error")
        rss.stop.set()
        rss.join(1)
        return {"weight_dtype": weight_dtype, "ok": ok, "errors": [e.get("exception_message") for e in errors],
                "server_start_seconds": client.start_seconds, "prompt_seconds": t_done - t_queue,
                "rss_idle_gb": rss_idle / 2**30, "rss_hwm_gb": rss.hwm / 2**30, "nodes": nodes,
                "decoded_frames": shape, "log": harness.tail(client.log, 40) if not ok else None}
    finally:
        rss.stop.set()
        harness.stop_server(client)


def check_outputs(base: Path, weight_dtype: str) -> dict:
    """The saved result video: frame count and size (PyAV)."""
    import av

    vids = sorted((base / "output" / "im_animation").glob(f"wan21_1.3b_{weight_dtype}_*.mp4"))
    if not vids:
        return {"video": None}
    with av.open(str(vids[-1])) as c:
        frames = [f for f in c.decode(video=0)]
    return {"video": str(vids[-1]), "frames": len(frames),
            "size": [frames[0].height, frames[0].width] if frames else None}


def print_run(r: dict) -> None:
    print(f"\nweight_dtype {r['weight_dtype']}: {'ok' if r['ok'] else 'FAILED'}; prompt {r['prompt_seconds']:.1f} s, "
          f"server RSS idle {r['rss_idle_gb']:.2f} GB, peak (VmHWM) {r['rss_hwm_gb']:.2f} GB; server start "
          f"{r['server_start_seconds']:.1f} s")
    print(f"  {'node':<36}{'seconds':>9}{'RSS start GB':>14}{'RSS peak GB':>13}")
    for n in r["nodes"]:
        name = f"{n['title']} [{n['node']}]"
        print(f"  {name[:35]:<36}{n['seconds']:>9.2f}{n['rss_start_gb']:>14.2f}{n['rss_peak_gb']:>13.2f}")
    v = r.get("video") or {}
    print(f"  decoded frames (PreviewImage of VAE Decode): {r['decoded_frames']}; result video: "
          f"{v.get('frames')} frames of {v.get('size')}")
    for e in r["errors"]:
        print(f"  error: {e}")


def run_training(weights: Path, work: Path) -> dict:
    py = REPO / ".venv" / "bin" / "python"
    py = str(py) if py.exists() else sys.executable
    cmd = [py, "-m", "imanim_core", "bench", "real-size", "--weights", str(weights), "--work", str(work), "--json"]
    log("training: " + " ".join(cmd))
    r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=str(REPO), env=harness.subprocess_env(),
                       check=False)
    try:
        return json.loads(r.stdout) | {"returncode": r.returncode}
    except json.JSONDecodeError:
        return {"returncode": r.returncode, "stdout": r.stdout[-3000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="folder with diffusion_models/, vae/, im_animation/ (filled when missing)")
    ap.add_argument("--dtypes", default="default,fp8_e4m3fn", help="weight_dtype values of the stock loader")
    ap.add_argument("--skip-train", action="store_true", help="only the ComfyUI part")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (weights, outputs, logs)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per prompt")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the server and the training runs (OMP_NUM_THREADS; default: the "
                         "harness's 1 unless OMP_NUM_THREADS is set)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    a = ap.parse_args()
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    d = harness.comfy_dir()
    if not (d / "main.py").is_file():
        raise SystemExit(f"no ComfyUI checkout at {d} (set COMFYUI_PATH; ../shared/comfyui/install.sh)")

    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="imanim_realsize_"))
    try:
        weights = Path(a.weights) if a.weights else tmp / "models"
        log(f"real-size smoke in {tmp}; weights in {weights}")
        files = make_weights_and_inputs(weights, tmp / "inputs")
        results = {"weights": files, "runs": [], "threads": harness.subprocess_env()["OMP_NUM_THREADS"]}
        ok = True
        for wd in [x.strip() for x in a.dtypes.split(",") if x.strip()]:
            base = tmp / f"comfy_{wd}"
            (base / "custom_nodes").mkdir(parents=True)
            os.symlink(REPO, base / "custom_nodes" / "comfyui-im-animation", target_is_directory=True)
            os.symlink(weights.resolve(), base / "models", target_is_directory=True)
            shutil.copytree(tmp / "inputs", base / "input", ignore=shutil.ignore_patterns("_puppets"))
            log(f"workflow wan21_1.3b, weight_dtype {wd} (a fresh server)")
            r = run_workflow(base, files, wd, a.timeout)
            r["video"] = check_outputs(base, wd)
            good = (r["ok"] and r["decoded_frames"] == FRAMES and r["video"].get("frames") == FRAMES
                    and r["video"].get("size") == [SIZE, SIZE])
            ok &= good
            results["runs"].append(r)
            print_run(r)
        if not a.skip_train:
            tr = run_training(weights, tmp / "train")
            results["training"] = tr
            ok &= tr.get("returncode") == 0
            for row in tr.get("runs", []):
                print(f"\ntrain stage3 --preset real --dit-training {row['dit_training']}: "
                      f"{'ok' if row['ok'] else 'FAILED'}; steps {row.get('step_seconds')} s, "
                      f"peak RSS {row['peak_rss_gb']:.2f} GB, process {row['seconds']:.1f} s")
        results["total_seconds"] = time.perf_counter() - t_all
        results["ok"] = bool(ok)
        print(f"\nreal-size smoke: {'ok' if ok else 'FAILED'} in {results['total_seconds']:.0f} s "
              f"({results['threads']} torch thread(s)) "
              f"(weights {files['seconds']:.0f} s); peak RSS: ComfyUI server "
              + ", ".join(f"{r['weight_dtype']} {r['rss_hwm_gb']:.2f} GB" for r in results["runs"])
              + ("".join(f", training {row['dit_training']} {row['peak_rss_gb']:.2f} GB"
                         for row in results.get("training", {}).get("runs", []))))
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2))
        return 0 if ok else 1
    finally:
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
