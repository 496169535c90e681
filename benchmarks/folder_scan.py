"""Files/s of the first scan of an image folder (issue 32 item 4), before and after.

``python -m benchmarks.folder_scan [--files=100000] [--cores=1,2] [--repeats=2]
[--before=REV] [--out=PATH]``

Writes ``--files`` small JPEGs (32-64 px, 10 classes; ``--bad`` of them
truncated, garbage or empty) into a temporary folder, then times the first
scan of the split (listing, header reads, the decode of every file within the
pixel limit, the manifest write: ``image_folder._scan_split`` with an empty
manifest cache) in a fresh process pinned to 1 and to 2 cores
(``os.sched_setaffinity`` before TensorFlow starts, so its thread pools are
sized for those cores). ``--before=REV`` (default: the commit before the
faster scan) runs the same scan with ``simclr_tf/data/image_folder.py`` of
that revision (``git show``, imported as a module of its own); the two
alternate, so that a load that comes and goes on a shared machine hits both.
Each run also checks that the scan found the same files, labels, sizes and
bad files as the first run, and reports the second (cached) scan's time.

The files are in the page cache (just written), so this measures the CPU
cost of the scan, not the disk: a first scan from a cold disk adds its reads.
"""

import argparse
import datetime
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BEFORE_REV = "75261e4"  # the last commit with the scan before header parsing and decode groups
CLASSES = 10

_CHILD = r"""
import hashlib, importlib.util, json, os, sys, tempfile, time
cores = [int(c) for c in sys.argv[3].split(",")]
os.sched_setaffinity(0, cores)
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["SIMCLR_TF_CACHE_DIR"] = tempfile.mkdtemp(prefix="scan-cache-")
import tensorflow as tf  # started before the clock, as in a training run
if sys.argv[2] == "after":
    from simclr_tf.data import image_folder as m
else:
    spec = importlib.util.spec_from_file_location("image_folder_before", sys.argv[2])
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
import logging
logging.disable(logging.WARNING)  # the progress lines
root = sys.argv[1]
classes = tuple(sorted(os.listdir(os.path.join(root, "train"))))
wall, cpu = time.perf_counter(), time.process_time()
scan = m._scan_split(root, "train", classes)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
cached = time.perf_counter()
again = m._scan_split(root, "train", classes)
cached = time.perf_counter() - cached
assert again == scan
digest = hashlib.sha1(json.dumps([scan.files, scan.labels, [list(s) for s in scan.shapes],
                                  scan.orientations, scan.bad, scan.large]).encode()).hexdigest()
print("RESULT " + json.dumps({"wall_s": wall, "cpu_s": cpu, "cached_s": cached,
                              "good": len(scan.files), "bad": len(scan.bad),
                              "digest": digest}))
"""


def make_folder(root, n, bad, seed=0):
    """``root/train/c0..c9/``: ``n`` JPEGs of 32-64 px, ``bad`` of them corrupt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    # A few random textures, resized: encoding is the cost, not the pixel source.
    sources = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)) for _ in range(16)]
    for c in range(CLASSES):
        os.makedirs(os.path.join(root, "train", f"c{c}"), exist_ok=True)
    corrupt = set(rng.choice(n, size=min(bad, n), replace=False).tolist())
    for i in range(n):
        side = 32 + int(rng.integers(0, 33))
        buf = io.BytesIO()
        sources[i % len(sources)].resize((side, 32 + (i * 7) % 33)).save(
            buf, "JPEG", quality=90)
        data = buf.getvalue()
        if i in corrupt:  # truncated, garbage after a JPEG start, or empty
            data = (data[: len(data) // 2], b"\xff\xd8\xff" + bytes(200), b"")[i % 3]
        with open(os.path.join(root, "train", f"c{i % CLASSES}", f"{i:07d}.jpg"), "wb") as f:
            f.write(data)
    return sorted(corrupt)


def _before_module(rev, where):
    """``image_folder.py`` of git revision ``rev`` written to ``where``; None without git."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        text = subprocess.run(["git", "show", f"{rev}:simclr_tf/data/image_folder.py"],
                              cwd=here, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no 'before' scan: git show {rev} failed ({e})", file=sys.stderr)
        return None
    path = os.path.join(where, "image_folder_before.py")
    with open(path, "wb") as f:
        f.write(text)
    return path


def scan_once(root, variant, cores):
    """One first scan in a fresh process on ``cores`` CPUs; its RESULT dict."""
    allowed = sorted(os.sched_getaffinity(0))[:cores]
    load = [round(x, 2) for x in os.getloadavg()]
    out = subprocess.run([sys.executable, "-c", _CHILD, root, variant,
                          ",".join(map(str, allowed))],
                         check=True, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT "):]), load_before=load)


def run(files=100_000, bad=30, cores=(1, 2), repeats=2, before=BEFORE_REV, log=print,
        folder=None):
    from benchmarks import machine

    work = tempfile.mkdtemp(prefix="folder-scan-")
    try:
        root = folder or os.path.join(work, "data")
        start = time.perf_counter()
        if folder is None:
            corrupt = make_folder(root, files, bad)
            log(f"  wrote {files} JPEGs ({len(corrupt)} corrupt) in "
                f"{time.perf_counter() - start:.1f} s")
        variants = {"after": "after"}
        if before:
            path = _before_module(before, work)
            if path:
                variants = {"before": path, "after": "after"}
        runs, digests = [], set()
        for r in range(repeats):
            for n_cores in cores:
                for name, variant in variants.items():
                    res = scan_once(root, variant, n_cores)
                    res.update(variant=name, cores=n_cores, repeat=r,
                               files_per_s=files / res["wall_s"])
                    digests.add(res.pop("digest"))
                    runs.append(res)
                    log(f"  {name:6s} {n_cores} core(s): {res['files_per_s']:8.0f} files/s "
                        f"({res['wall_s']:.1f} s, cpu {res['cpu_s']:.1f} s; cached "
                        f"{res['cached_s']:.2f} s; load {res['load_before']})")
        summary = {}
        for n_cores in cores:
            for name in variants:
                rates = [x["files_per_s"] for x in runs
                         if x["variant"] == name and x["cores"] == n_cores]
                cpus = [x["cpu_s"] for x in runs if x["variant"] == name and x["cores"] == n_cores]
                summary[f"{name}_{n_cores}"] = {
                    "files_per_s_median": statistics.median(rates), "files_per_s_max": max(rates),
                    "cpu_us_per_file": statistics.median(cpus) / files * 1e6}
            if "before" in variants:
                summary[f"ratio_{n_cores}"] = (summary[f"after_{n_cores}"]["files_per_s_median"]
                                               / summary[f"before_{n_cores}"]["files_per_s_median"])
        return {"files": files, "bad": bad, "same_result_in_every_run": len(digests) == 1,
                "before_rev": before if "before" in variants else None,
                "runs": runs, "summary": summary, "cpu": machine.cpu_info(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["python -m benchmarks.folder_scan"] + sys.argv[1:])}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.folder_scan",
                                description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--bad", type=int, default=30, help="corrupt files among them")
    p.add_argument("--cores", default="1,2", help="comma-separated core counts")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--before", default=BEFORE_REV,
                   help="git revision of the scan to compare with ('' for none)")
    p.add_argument("--folder", default=None,
                   help="scan this ROOT (with ROOT/train/<class>/) instead of generating one")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.folder:
        import glob
        args.files = len(glob.glob(os.path.join(args.folder, "train", "*", "*")))
    result = run(files=args.files, bad=args.bad, repeats=args.repeats, before=args.before,
                 cores=tuple(int(c) for c in args.cores.split(",")), folder=args.folder,
                 log=lambda line: print(line, flush=True))
    print(json.dumps(result["summary"], indent=1))
    print("same result in every run:", result["same_result_in_every_run"])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
