"""Frozen-feature linear evaluation, solver against solver, on saved features.

Extraction is the slow part and the same for every solver, so it runs once:

    python benchmarks/linear_eval_solvers.py extract --model_dir=RUN --out=DIR

writes ``DIR/{train_x,train_y,eval_x,eval_y}.npy`` (the frozen features h of
the run's newest checkpoint, through ``linear_eval.frozen_features``) and
``DIR/meta.json`` (number of classes, model_dir, step). Then

    python benchmarks/linear_eval_solvers.py compare --features=DIR [--rev=REV]
        [--solver=NAME] [--memmap]

runs ``linear_eval.fit_and_score`` on those arrays and prints one JSON line:
the chosen l2, the held-out top-1 of every l2, top-1/top-5 on the eval split
and the wall time. ``--rev`` runs the package as it was at a git revision
(``git archive REV simclr_tf`` into a temporary folder, put first on
PYTHONPATH, in a subprocess), so the old and the new code read the very same
numbers. ``--solver`` is passed through to old revisions that had a choice
(``lbfgs``, ``minibatch``); ``--memmap`` opens the training features with
``np.load(mmap_mode="r")``. And

    python benchmarks/linear_eval_solvers.py synthetic --rows=N --dim=D --classes=C

runs the protocol on seeded synthetic features (overlapping Gaussian classes,
correlated dimensions) to see how the number of passes over the rows grows
with the number of classes.

Not imported by the package. docs/linear_eval.md has the numbers it gave.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ARRAYS = ("train_x", "train_y", "eval_x", "eval_y")


def extract(args):
    import keras

    from simclr_tf import config as config_lib
    from simclr_tf import linear_eval, runtime
    from simclr_tf.runtime import run_dir as run_dir_lib

    run = run_dir_lib.RunDir(args.model_dir)
    cfg = config_lib.resolve(run.join(run_dir_lib.CONFIG))
    keras.utils.set_random_seed(cfg.seed)
    exp = runtime.build(cfg)
    print(exp.checkpointer.restore_for_training(None), file=sys.stderr)
    features = linear_eval.frozen_features(exp.model.encoder, cfg.data, strategy=exp.strategy)
    os.makedirs(args.out, exist_ok=True)
    for name, array in zip(ARRAYS, features):
        np.save(os.path.join(args.out, name + ".npy"), np.asarray(array))
    meta = {"num_classes": int(exp.num_classes), "model_dir": os.path.abspath(args.model_dir),
            "step": int(exp.step), "shape": list(features[0].shape)}
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f)
    print(json.dumps(meta))


def compare(args):
    if args.rev:
        return _compare_at_revision(args)
    from simclr_tf import linear_eval

    with open(os.path.join(args.features, "meta.json")) as f:
        meta = json.load(f)
    features = [np.load(os.path.join(args.features, name + ".npy"),
                        mmap_mode="r" if args.memmap and name.endswith("_x") else None)
                for name in ARRAYS]
    kwargs = {"solver": args.solver} if args.solver else {}
    passes = _count_passes(linear_eval)
    start = time.monotonic()
    result = linear_eval.fit_and_score(tuple(features), meta["num_classes"], seed=args.seed,
                                       **kwargs)
    result["seconds"] = round(time.monotonic() - start, 2)
    if passes is not None:
        result["objective_passes"] = passes
    result["code"] = os.path.dirname(os.path.dirname(os.path.abspath(linear_eval.__file__)))
    print(json.dumps(result))


def synthetic(args):
    from simclr_tf import linear_eval

    rng = np.random.default_rng(args.seed)
    n, d, c = args.rows, args.dim, args.classes
    mixing = rng.normal(size=(d, d)) * np.logspace(-1, 1, d)[:, None] / np.sqrt(d)
    means = rng.normal(size=(c, d)) * args.separation
    y = rng.integers(0, c, n + n // 5).astype(np.int32)
    x = ((rng.normal(size=(len(y), d)) + means[y]) @ mixing).astype(np.float32)
    passes = _count_passes(linear_eval)
    start = time.monotonic()
    result = linear_eval.fit_and_score((x[:n], y[:n], x[n:], y[n:]), c, seed=args.seed)
    print(json.dumps({"rows": n, "dim": d, "classes": c, "l2": result["l2"],
                      "top1": result["top1"], "seconds": round(time.monotonic() - start, 1),
                      "objective_passes": passes}))


def _count_passes(linear_eval):
    """Counts the solver's passes over the rows (the ImageNet cost is
    passes x one pass), when the code has the single L-BFGS solver; else None."""
    solver = getattr(linear_eval, "solver", None)
    objective = getattr(solver, "_Objective", None)
    if objective is None:
        return None
    counts = {"rows": 0, "passes": 0}
    call = objective.__call__

    def counted(self, params, l2):
        counts["passes"] += 1
        counts["rows"] += self.n
        return call(self, params, l2)

    objective.__call__ = counted
    return counts


def _compare_at_revision(args):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="linear_eval_rev_") as folder:
        archive = subprocess.run(["git", "-C", repo, "archive", args.rev, "simclr_tf"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        argv = [sys.executable, os.path.abspath(__file__), "compare",
                f"--features={args.features}", f"--seed={args.seed}"]
        argv += [f"--solver={args.solver}"] if args.solver else []
        argv += ["--memmap"] if args.memmap else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [folder] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        subprocess.run(argv, check=True, env=env)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("extract", help="save the frozen features of a run's splits")
    p.add_argument("--model_dir", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("compare", help="fit_and_score on saved features")
    p.add_argument("--features", required=True)
    p.add_argument("--rev", default="", help="run the package of this git revision")
    p.add_argument("--solver", default="", help="old revisions: lbfgs or minibatch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memmap", action="store_true")
    p = sub.add_parser("synthetic", help="the protocol on synthetic features")
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--separation", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    {"extract": extract, "compare": compare, "synthetic": synthetic}[args.command](args)


if __name__ == "__main__":
    main()
