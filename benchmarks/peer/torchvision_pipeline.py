"""Peer side of ``benchmarks/peer_pipeline.py``: lightly's SimCLR views from a folder.

Runs in the peer's own virtual environment (PyTorch CPU build, torchvision,
lightly; never a dependency of simclr_tf). Reads ``FOLDER/<class>/<image>``
with ``torchvision.datasets.ImageFolder`` and lightly's ``SimCLRTransform``
(random resized crop, flip, colour jitter, grayscale, Gaussian blur, two views
per image), loads batches with a ``DataLoader`` of ``--workers`` processes
(one torch thread each) and prints one JSON line: pairs, wall seconds and the
CPU seconds of this process and its workers over the timed batches.
"""

import argparse
import json
import os
import time


def declare_torchvision_ops():
    """Lets torchvision import beside a CPU build of torch.

    The registry's torchvision wheel carries C ops built for CUDA torch; they
    fail to load here, and torchvision's import then registers fake kernels for
    two detection ops that no longer exist. Declaring the two schemas first is
    enough (the benchmarks never call them).
    """
    import torch

    for name in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{name}",
                                 "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already there (a torchvision whose C ops did load)
            pass


def proc_cpu_seconds(pids):
    """User + system CPU seconds of the given processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _worker_init(_):
    import torch
    torch.set_num_threads(1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", required=True, help="FOLDER/<class>/<image> (one split)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--warmup_batches", type=int, default=3)
    p.add_argument("--batches", type=int, default=15)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    declare_torchvision_ops()
    import torch
    import torchvision
    from lightly.transforms import SimCLRTransform

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dataset = torchvision.datasets.ImageFolder(
        args.folder, transform=SimCLRTransform(input_size=args.image_size))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers, worker_init_fn=_worker_init,
        persistent_workers=args.workers > 0, prefetch_factor=2 if args.workers else None)
    needed = args.warmup_batches + args.batches
    if needed > len(loader):
        raise SystemExit(f"{len(dataset)} images make {len(loader)} batches; need {needed}")
    iterator = iter(loader)
    for _ in range(args.warmup_batches):
        next(iterator)
    pids = [os.getpid()] + [w.pid for w in getattr(iterator, "_workers", [])]
    cpu0, t0 = proc_cpu_seconds(pids), time.perf_counter()
    pairs = 0
    for _ in range(args.batches):
        (view1, view2), _labels = next(iterator)
        assert view1.shape[-1] == args.image_size and view2.shape == view1.shape
        pairs += int(view1.shape[0])
    wall = time.perf_counter() - t0
    cpu = proc_cpu_seconds(pids) - cpu0
    print(json.dumps({"side": "torchvision", "pairs": pairs, "wall_s": wall, "cpu_s": cpu,
                      "versions": {"torch": torch.__version__,
                                   "torchvision": torchvision.__version__}}))
    del iterator


if __name__ == "__main__":
    main()
