"""Wall time of the default ``train_then_eval`` run and the top-1 it reaches.

Runs ``python -m simclr_tf.run --mode=train_then_eval`` (the built-in defaults:
offline_shapes, ResNet-18 x0.25, 4 epochs, linear probe trained during
pretraining, then the frozen-feature linear eval) in a subprocess per precision and reads ``result.json``. The
wall time includes start-up, the eval and the export that ``train_then_eval``
writes; the CPU time (user + system of the run) divided by the number of cores
estimates the wall time on an otherwise idle machine. The same
seed and data order make the float32 and bfloat16 runs the same experiment,
so their top-1 is the linear-eval accuracy comparison of the two precisions.
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common


def run(precisions=("float32", "bfloat16"), extra_flags=(), log=print):
    """Runs the default experiment once per precision.

    The runs use a snapshot of the ``simclr_tf`` package taken at the start,
    so that every precision runs the same code even while the working tree
    changes; the resolved config of each run is recorded.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    snapshot = tempfile.mkdtemp(prefix="simclr_tta_code_")
    shutil.copytree(os.path.join(root, "simclr_tf"), os.path.join(snapshot, "simclr_tf"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join(
        [snapshot] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    try:
        return {"rows": [_run_one(precision, extra_flags, snapshot, env, log)
                         for precision in precisions]}
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _run_one(precision, extra_flags, cwd, env, log):
    model_dir = tempfile.mkdtemp(prefix="simclr_tta_")
    command = [sys.executable, "-m", "simclr_tf.run", "--mode=train_then_eval",
               f"--model_dir={model_dir}", f"--precision={precision}", *extra_flags]
    load_before = common.load_average()
    start = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env,
                          check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    try:
        if proc.returncode != 0:
            log(f"  time to accuracy {precision}: failed")
            return {"precision": precision, "error": proc.stderr[-2000:]}
        with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as f:
            result = json.load(f)
        config = {}
        path = os.path.join(model_dir, "config.yaml")
        if os.path.isfile(path):
            import yaml
            with open(path, encoding="utf-8") as f:
                config = yaml.safe_load(f) or {}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    row = {"precision": precision, "wall_s": wall, "cpu_s": cpu,
           "wall_s_idle_estimate": cpu / (os.cpu_count() or 1),
           "top1": result["top1"],
           "feature_linear_eval_top1": (result.get("feature_linear_eval") or {}).get("top1"),
           "top5": result["top5"], "global_step": result["global_step"],
           "flags": " ".join(command[3:]), "load_average_before": load_before,
           "load_average_after": common.load_average(),
           "config": {k: config.get(k) for k in (
               "dataset", "resnet_depth", "width_multiplier", "image_size",
               "train_batch_size", "train_epochs", "train_steps", "learning_rate",
               "temperature", "seed", "precision", "jit_compile")}}
    log(f"  time to accuracy {precision}: {wall:.0f} s (CPU {cpu:.0f} s), "
        f"top1 {row['top1']:.4f}, feature_linear_eval_top1 "
        f"{row['feature_linear_eval_top1']}")
    return row
