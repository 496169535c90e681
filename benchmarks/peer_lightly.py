"""Time to accuracy against a PyTorch peer: lightly's SimCLR and ours on the same folder.

One command (on an idle machine; the three trainings run one after the other)::

    python -m benchmarks.peer_lightly --data_dir=ROOT \\
        --peer_python=/path/to/peer_venv/bin/python --out=peer_runs [--seed=0]

``ROOT`` is an image folder with ``ROOT/train/<class>/<image>`` and
``ROOT/test/<class>/<image>`` (the CIFAR-10 development folder: 500 + 100
photographs per class, 32 px). The runs, all ResNet-18 (CIFAR stem) at
``--width`` (0.5), batch ``--batch_size`` (128), ``--epochs`` (10):

* ``ours``: ``python -m simclr_tf.run --config=cifar10_cpu --mode=train`` (the
  shipped CPU recipe, its online probe included) with a checkpoint every
  epoch; afterwards each checkpoint of ``--eval_epochs`` is embedded with
  ``python -m simclr_tf.embed`` (h of both splits, the evaluation
  preprocessing);
* ``lightly``: ``benchmarks/peer/lightly_simclr.py`` run by ``--peer_python``
  (its own virtual environment: torch CPU build, torchvision, lightly), the
  recipe of lightly's CIFAR-10 benchmark (SGD 0.06 x B/128, weight decay 5e-4,
  temperature 0.5, colour strength 0.5, no blur), h saved at the same epochs;
* ``lightly_T<ours>``: the same at our config's temperature, which tells the
  recipe from the implementation.

Every saved h is then scored the same way, by the package: the frozen-feature
protocol (:func:`simclr_tf.linear_eval.protocol.fit_and_score`: standardised
h, l2 chosen on a held-out 10%, logistic regression) and the weighted kNN
(:func:`simclr_tf.knn.evaluate`, k 200, T 0.1). The wall time at epoch ``e``
is the training process's time from its launch (start-up included) to the end
of epoch ``e``; the peer's pauses to embed are subtracted, and ours embeds
after training. ``OUT/results.json`` holds everything; the table printed at the
end is ``--report=OUT/results.json``'s.

``--smoke`` runs the whole chain on a generated folder of a few dozen 32-px
images for one short epoch (a minute or two; it checks the plumbing, not the
numbers). Without ``--peer_python`` only our side runs.
"""

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEER_SCRIPT = os.path.join(HERE, "peer", "lightly_simclr.py")


def _csv_ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_lightly", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", help="ROOT/train and ROOT/test class folders")
    p.add_argument("--peer_python", help="python of the peer's virtual environment")
    p.add_argument("--out", help="output folder (runs, saved h, results.json)")
    p.add_argument("--config", default="cifar10_cpu", help="our config (configs/NAME.yaml)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval_epochs", type=_csv_ints, default=(2, 4, 6, 8, 10))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="ours,lightly,lightly_ours_t",
                   help="which of ours, lightly, lightly_ours_t to run")
    p.add_argument("--peer_threads", type=int, default=2)
    p.add_argument("--peer_workers", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="tiny folder, one short epoch")
    p.add_argument("--report", metavar="RESULTS_JSON", help="print the table and exit")
    args = p.parse_args(argv)
    if args.report:
        return args
    if not args.out:
        p.error("--out is required")
    if args.smoke:
        args.epochs, args.eval_epochs, args.batch_size = 1, (1,), 16
    elif not args.data_dir:
        p.error("--data_dir is required (or --smoke)")
    if max(args.eval_epochs) > args.epochs:
        p.error("--eval_epochs beyond --epochs")
    return args


def our_temperature(config):
    """The temperature of ``configs/<config>.yaml`` (what the package would train with)."""
    import yaml

    path = config if os.path.isfile(config) else os.path.join(ROOT, "configs", f"{config}.yaml")
    with open(path, encoding="utf-8") as f:
        return float((yaml.safe_load(f) or {}).get("temperature", 0.5))


# --------------------------------------------------------------------- data
def make_smoke_folder(root, per_class=24, test_per_class=8, classes=2, size=32, seed=0):
    """A tiny ``root/{train,test}/<class>/<i>.png`` folder of coloured noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"class_{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                base = rng.integers(0, 256, 3) * (c + 1) % 256
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, f"{i}.png"))
    return root


def count_images(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


# --------------------------------------------------------------------- runs
def _run(cmd, log_path, env=None):
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if proc.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed (log {log_path}):\n{tail}")
    return start


def run_ours(args, out):
    """Trains with the package's CLI, then embeds each checkpoint of ``eval_epochs``."""
    model_dir = os.path.join(out, "model")
    steps = count_images(os.path.join(args.data_dir, "train")) // args.batch_size
    flags = [f"--config={args.config}", "--mode=train", f"--data_dir={args.data_dir}",
             f"--model_dir={model_dir}", "--train_steps=0", f"--train_epochs={args.epochs}",
             f"--train_batch_size={args.batch_size}", f"--width_multiplier={args.width}",
             f"--seed={args.seed}", "--checkpoint_epochs=1",
             f"--keep_checkpoint_max={args.epochs}", f"--log_every_steps={max(1, steps)}"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = _run([sys.executable, "-m", "simclr_tf.run", *flags],
                 os.path.join(out, "train.log"), env)
    times = {}
    with open(os.path.join(model_dir, "train_log.jsonl"), encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            times[entry["step"]] = entry["time"]
    # A checkpoint at the end of every epoch: the e-th (by step) is epoch e's.
    saved = sorted({int(name.split("-")[1].split(".")[0])
                    for name in os.listdir(os.path.join(model_dir, "checkpoints"))
                    if name.startswith("ckpt-")})
    if len(saved) != args.epochs:
        raise RuntimeError(f"expected {args.epochs} checkpoints, found steps {saved}")
    epochs = []
    for epoch in args.eval_epochs:
        step = saved[epoch - 1]
        folder = os.path.join(out, f"epoch_{epoch:02d}")
        shadow = _checkpoint_view(model_dir, step, os.path.join(out, f".ckpt_{epoch:02d}"))
        for split in ("train", "test"):
            emb = os.path.join(out, f".embed_{epoch:02d}_{split}")
            _run([sys.executable, "-m", "simclr_tf.embed", f"--model_dir={shadow}",
                  "--weights=checkpoint", "--dataset=image_folder",
                  f"--data_dir={args.data_dir}", f"--split={split}", f"--out={emb}"],
                 os.path.join(out, f"embed_{epoch:02d}_{split}.log"), env)
            _save_embedding(emb, folder, split)
            shutil.rmtree(emb, ignore_errors=True)
        shutil.rmtree(shadow, ignore_errors=True)
        logged = min(t for t in times if t >= step)  # log points fall on epoch ends
        epochs.append({"epoch": epoch, "step": step, "wall_s": times[logged] - start})
    return epochs


def _checkpoint_view(model_dir, step, shadow):
    """A model_dir whose only checkpoint is ``step``'s (links, nothing copied)."""
    shutil.rmtree(shadow, ignore_errors=True)
    ckpts = os.path.join(shadow, "checkpoints")
    os.makedirs(ckpts)
    shutil.copy(os.path.join(model_dir, "config.yaml"), shadow)
    source = os.path.join(model_dir, "checkpoints")
    prefix = f"ckpt-{step}"
    found = [n for n in os.listdir(source) if n.startswith(prefix + ".")]
    if not found:
        raise RuntimeError(
            f"no checkpoint of step {step} in {source}: {sorted(os.listdir(source))}")
    for name in found:
        os.symlink(os.path.join(source, name), os.path.join(ckpts, name))
    with open(os.path.join(ckpts, "checkpoint"), "w", encoding="utf-8") as f:
        f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    return shadow


def _save_embedding(emb, folder, split):
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    h = np.load(os.path.join(emb, "h.npy"))
    with open(os.path.join(emb, "index.csv"), encoding="utf-8", newline="") as f:
        y = np.array([int(row["label"]) for row in csv.DictReader(f)], np.int32)
    np.save(os.path.join(folder, f"{split}_h.npy"), h.astype(np.float32))
    np.save(os.path.join(folder, f"{split}_y.npy"), y)


def run_lightly(args, out, temperature):
    cmd = [args.peer_python, PEER_SCRIPT, f"--data_dir={args.data_dir}", f"--out={out}",
           f"--epochs={args.epochs}", "--eval_epochs=" + ",".join(map(str, args.eval_epochs)),
           f"--batch_size={args.batch_size}", f"--width={args.width}",
           f"--temperature={temperature}", f"--seed={args.seed}",
           f"--threads={args.peer_threads}", f"--num_workers={args.peer_workers}"]
    if args.smoke:
        cmd.append("--max_steps_per_epoch=2")
    start = _run(cmd, os.path.join(out, "train.log"))
    with open(os.path.join(out, "timeline.json"), encoding="utf-8") as f:
        timeline = json.load(f)
    return [{"epoch": e["epoch"], "step": e["step"],
             "wall_s": e["time"] - start - e["embed_s_before"]} for e in timeline["epochs"]]


# --------------------------------------------------------------------- scoring
def evaluate_saved(folder):
    """Frozen-feature protocol and kNN on ``folder/{train,test}_{h,y}.npy``."""
    import numpy as np

    from simclr_tf import knn
    from simclr_tf.linear_eval import protocol

    arrays = [np.load(os.path.join(folder, f"{split}_{part}.npy"))
              for split in ("train", "test") for part in ("h", "y")]
    num_classes = int(max(arrays[1].max(), arrays[3].max())) + 1
    linear = protocol.fit_and_score(tuple(arrays), num_classes)
    near = knn.evaluate(tuple(arrays), num_classes)
    return {"linear_top1": linear["top1"], "knn_top1": near["top1"], "l2": linear["l2"]}


def table(results):
    """Markdown: one row per (epoch, run) with wall seconds, linear and kNN top-1."""
    lines = ["| epoch | run | wall s | frozen-feature top-1 | kNN top-1 |",
             "|---|---|---|---|---|"]
    rows = [(e["epoch"], name, e) for name, run in results["runs"].items()
            for e in run["epochs"]]
    for epoch, name, e in sorted(rows, key=lambda r: (r[0], r[1])):
        lines.append(f"| {epoch} | {name} | {e['wall_s']:.0f} | {e['linear_top1']:.4f} | "
                     f"{e['knn_top1']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            print(table(json.load(f)))
        return None
    os.makedirs(args.out, exist_ok=True)
    if args.smoke and not args.data_dir:
        args.data_dir = make_smoke_folder(os.path.join(args.out, "smoke_data"))
    args.data_dir = os.path.abspath(args.data_dir)
    t_ours = our_temperature(args.config)
    wanted = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not args.peer_python:
        wanted = [r for r in wanted if r == "ours"]
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "argv": sys.argv[1:], "load_average_before": list(os.getloadavg()),
               "seed": args.seed, "our_temperature": t_ours, "runs": {}}
    for name in wanted:
        out = os.path.join(args.out, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        load = list(os.getloadavg())
        print(f"training {name} (load {load})", flush=True)
        if name == "ours":
            epochs = run_ours(args, out)
        elif name in ("lightly", "lightly_ours_t"):
            epochs = run_lightly(args, out, 0.5 if name == "lightly" else t_ours)
        else:
            raise SystemExit(f"unknown run {name!r}")
        for e in epochs:
            e.update(evaluate_saved(os.path.join(out, f"epoch_{e['epoch']:02d}")))
        label = name if name != "lightly_ours_t" else f"lightly_T{t_ours:g}"
        results["runs"][label] = {"epochs": epochs, "load_average_before": load,
                                  "load_average_after": list(os.getloadavg())}
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
