"""Augmented SimCLR view pairs per second per core: ours against torchvision's (lightly's).

One command runs both sides on the same generated folder of JPEGs::

    python -m benchmarks.peer_pipeline --folder=/tmp/jpegs \\
        --peer_python=/path/to/peer_venv/bin/python [--cores=1,2] [--rounds=3]

* The folder (``FOLDER/train/<class>/<image>.jpg``) is generated when absent:
  ``--num_images`` JPEGs of 300-500 px a side (quality 90, 4:2:0 chroma, smooth
  random fields with fine noise, so that they compress like photographs), with
  a fixed seed.
* Ours: :func:`simclr_tf.data.pipeline.build_train_dataset` on
  ``--dataset=image_folder`` at ``--image_size`` (224: colour strength 1.0 and
  blur on, :func:`simclr_tf.data.augment.preset`), its ``tf.data`` threads set
  to the core count (private thread pool, one thread per op).
* Peer: ``benchmarks/peer/torchvision_pipeline.py`` run by ``--peer_python``
  (a virtual environment with torch, torchvision and lightly): lightly's
  ``SimCLRTransform`` (the same operations: random resized crop, flip, colour
  jitter p=0.8, grayscale p=0.2, blur p=0.5, sigma in [0.1, 2]) through a
  ``DataLoader`` with one worker process per core and one torch thread each
  (on one core, no worker process: the main process does the work, which
  measured about 1.2x faster there than one worker).

Every run is a fresh process pinned with ``taskset`` to the first ``n`` cores;
the two sides alternate within each round, so a change in the machine's load
hits both. Each run times ``--batches`` batches of ``--batch_size`` images
after ``--warmup_batches`` (tracing, worker start-up), and reports pairs per
wall-clock second and pairs per CPU second (the process and its workers, from
/proc), which moves less when other jobs share the cores. Ratios are ours over
the peer's per round; the printed figure is their median.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_SCRIPT = os.path.join(HERE, "peer", "torchvision_pipeline.py")
NUM_CLASSES = 10
# --breakdown: each step adds ops to the view ("none": decode and a bicubic
# resize of the whole image to image_size).
BREAKDOWN = ("none", "crop", "crop,flip,color", "crop,flip,color,blur")


def make_jpegs(folder, num_images, seed=0, min_side=300, max_side=500, quality=90):
    """Writes ``folder/train/class_<k>/<i>.jpg``; returns the number written.

    Each image is a sum of smooth random fields (coarse colour blobs, finer
    texture) plus pixel noise, so its JPEG has a photograph's entropy rather
    than a flat image's. Written to a temporary folder and renamed when done.
    """
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    tmp = folder.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(num_images):
        h, w = (int(x) for x in rng.integers(min_side, max_side + 1, size=2))
        image = np.zeros((h, w, 3), np.float32)
        for cells, amplitude in ((4, 90.0), (16, 45.0), (64, 20.0)):
            field = rng.normal(0.0, amplitude, (cells, cells, 3)).astype(np.float32)
            image += tf.image.resize(field[None], [h, w], method="bicubic")[0].numpy()
        image += 128.0 + rng.normal(0.0, 6.0, (h, w, 3)).astype(np.float32)
        data = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=quality)
        class_dir = os.path.join(tmp, "train", f"class_{i % NUM_CLASSES}")
        os.makedirs(class_dir, exist_ok=True)
        tf.io.write_file(os.path.join(class_dir, f"{i:06d}.jpg"), data)
    os.replace(tmp, folder)
    return num_images


def _proc_cpu_seconds():
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick


def run_ours(folder, cores, batch_size, warmup_batches, batches, image_size, seed=0,
             augmentations=None):
    """Times the package's training pipeline; returns the peer script's JSON fields.

    ``augmentations``: the view's op names (default: the preset's full list).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    from simclr_tf.config import Config
    from simclr_tf.data import pipeline

    cfg = Config(dataset="image_folder", data_dir=folder, train_split="train",
                 image_size=image_size, seed=seed, augmentations=augmentations)
    ds, _ = pipeline.build_train_dataset(cfg.data, cfg.augment, batch_size)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    iterator = iter(ds)
    for _ in range(warmup_batches):
        next(iterator)[0]["view1"].numpy()
    cpu0, t0 = _proc_cpu_seconds(), time.perf_counter()
    pairs = 0
    for _ in range(batches):
        views, _ = next(iterator)
        views["view2"].numpy()
        assert views["view1"].shape[1:] == (image_size, image_size, 3)
        pairs += int(views["view1"].shape[0])
    wall = time.perf_counter() - t0
    return {"side": "simclr_tf", "pairs": pairs, "wall_s": wall,
            "cpu_s": _proc_cpu_seconds() - cpu0, "versions": {"tensorflow": tf.__version__}}


def _pinned(cores):
    if shutil.which("taskset") and cores <= (os.cpu_count() or 1):
        return ["taskset", "-c", ",".join(str(c) for c in range(cores))]
    return []


def _run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_run(side, args, cores):
    common = ["--batch_size", str(args.batch_size), "--warmup_batches",
              str(args.warmup_batches), "--batches", str(args.batches),
              "--image_size", str(args.image_size)]
    if side == "ours":
        cmd = _pinned(cores) + [sys.executable, "-m", "benchmarks.peer_pipeline",
                                "--worker", "--folder", args.folder, "--cores", str(cores)]
        if args.augmentations:
            cmd += ["--augmentations", args.augmentations]
    else:
        workers = args.peer_one_core_workers if cores == 1 else cores
        cmd = _pinned(cores) + [args.peer_python, PEER_SCRIPT, "--folder",
                                os.path.join(args.folder, "train"), "--workers", str(workers)]
    row = _run_json(cmd + common)
    row.update(cores=cores, pairs_per_s=row["pairs"] / row["wall_s"],
               pairs_per_cpu_s=row["pairs"] / max(row["cpu_s"], 1e-9),
               load_average=[round(x, 2) for x in os.getloadavg()])
    return row


def summarize(rows):
    """Per core count: median pairs/s of each side and the median of the round ratios.

    ``rows``: dicts with ``side`` ("simclr_tf" / "torchvision"), ``cores``,
    ``round``, ``pairs_per_s`` and ``pairs_per_cpu_s``.
    """
    out = []
    for cores in sorted({r["cores"] for r in rows}):
        mine = {r["round"]: r for r in rows if r["cores"] == cores and r["side"] == "simclr_tf"}
        peer = {r["round"]: r for r in rows if r["cores"] == cores and r["side"] == "torchvision"}
        both = sorted(set(mine) & set(peer))
        if not both:
            continue
        line = {"cores": cores, "rounds": len(both)}
        for key in ("pairs_per_s", "pairs_per_cpu_s"):
            line[f"ours_{key}"] = statistics.median(mine[k][key] for k in both)
            line[f"peer_{key}"] = statistics.median(peer[k][key] for k in both)
            line[f"ratio_{key}"] = statistics.median(mine[k][key] / peer[k][key] for k in both)
        out.append(line)
    return out


def cores_needed(rate, pairs_per_s_per_core):
    """Cores that deliver ``rate`` pairs/s at a per-core rate (rounded up)."""
    import math
    return math.ceil(rate / pairs_per_s_per_core) if pairs_per_s_per_core > 0 else None


def table(summary, feed_rate=1200.0):
    """Markdown table; the cores an accelerator needs use the pairs per CPU second
    (a busy core's wall-clock rate understates an idle one's)."""
    lines = ["| cores | ours pairs/s | torchvision pairs/s | ours pairs/CPU-s | "
             "torchvision pairs/CPU-s | ours / torchvision (wall) | "
             "ours / torchvision (per CPU s) | cores for %g pairs/s (ours / torchvision) |"
             % feed_rate, "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(
            f"| {s['cores']} | {s['ours_pairs_per_s']:.1f} | {s['peer_pairs_per_s']:.1f} | "
            f"{s['ours_pairs_per_cpu_s']:.1f} | {s['peer_pairs_per_cpu_s']:.1f} | "
            f"{s['ratio_pairs_per_s']:.2f}x | {s['ratio_pairs_per_cpu_s']:.2f}x | "
            f"{cores_needed(feed_rate, s['ours_pairs_per_cpu_s'])} / "
            f"{cores_needed(feed_rate, s['peer_pairs_per_cpu_s'])} |")
    return "\n".join(lines)


def breakdown(args):
    """Pairs per CPU second of our pipeline as ops are added (1 core, medians of rounds)."""
    rates = {names: [] for names in BREAKDOWN}
    for rnd in range(args.rounds):
        for names in (BREAKDOWN if rnd % 2 == 0 else BREAKDOWN[::-1]):
            args.augmentations = names
            row = one_run("ours", args, 1)
            rates[names].append(row["pairs_per_cpu_s"])
            print(f"round {rnd} {names:<22} {row['pairs_per_cpu_s']:6.1f} pairs/CPU-s, "
                  f"{1000 / row['pairs_per_cpu_s']:5.2f} ms per pair", flush=True)
    args.augmentations = None
    out = {names: statistics.median(r) for names, r in rates.items()}
    previous = 0.0
    for names, rate in out.items():
        ms = 1000 / rate
        print(f"| {names} | {rate:.1f} | {ms:.2f} | +{ms - previous:.2f} |")
        previous = ms
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True, help="JPEG folder (generated when absent)")
    p.add_argument("--peer_python", default=None,
                   help="python of the peer's virtual environment (torch, torchvision, "
                        "lightly); without it only our side runs")
    p.add_argument("--num_images", type=int, default=2000)
    p.add_argument("--cores", default="1,2", help="comma-separated core counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--warmup_batches", type=int, default=3)
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--peer_one_core_workers", type=int, default=0,
                   help="DataLoader workers of the peer's 1-core runs: 0 (default) decodes "
                        "and augments in the main process, which on one core is faster than "
                        "one worker process (no copies between processes)")
    p.add_argument("--feed_rate", type=float, default=1200.0,
                   help="pairs/s an accelerator's step consumes (A100 ResNet-50 default)")
    p.add_argument("--out", default=None, help="write the rows and summary as JSON")
    p.add_argument("--smoke", action="store_true",
                   help="tiny: 64 images, 1 core, 1 round, 2 batches of 8")
    p.add_argument("--breakdown", action="store_true",
                   help="ours only, 1 core: the pipeline with the ops added one at a time "
                        "(%s)" % "; ".join(BREAKDOWN))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--augmentations", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.num_images, args.cores, args.rounds = 64, "1", 1
        args.batch_size, args.warmup_batches, args.batches = 8, 1, 2
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_ours(args.folder, int(args.cores), args.batch_size,
                                  args.warmup_batches, args.batches, args.image_size,
                                  augmentations=args.augmentations)))
        return None
    if args.breakdown:
        if not os.path.isdir(args.folder):
            make_jpegs(args.folder, args.num_images)
        return breakdown(args)
    if not os.path.isdir(args.folder):
        print(f"writing {args.num_images} JPEGs to {args.folder}", flush=True)
        make_jpegs(args.folder, args.num_images)
    sides = ["ours"] + (["peer"] if args.peer_python else [])
    rows = []
    for rnd in range(args.rounds):
        for cores in (int(c) for c in args.cores.split(",")):
            order = sides if rnd % 2 == 0 else sides[::-1]
            for side in order:
                row = one_run(side, args, cores)
                row["round"] = rnd
                rows.append(row)
                print(f"round {rnd} {row['side']:<11} {cores} core(s): "
                      f"{row['pairs_per_s']:7.1f} pairs/s, {row['pairs_per_cpu_s']:6.1f} "
                      f"pairs/CPU-s, load {row['load_average']}", flush=True)
    summary = summarize(rows)
    if summary:
        print(table(summary, args.feed_rate))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "summary": summary, "argv": sys.argv[1:],
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
