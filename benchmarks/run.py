"""The benchmark suite: ``python -m benchmarks.run [--smoke] [--sections=...]``.

Sections (``--sections``, comma-separated; default all but time_to_accuracy):

* ``machine``: CPU model and the flags that matter (AVX-512, AVX512-BF16,
  AMX), TF/Keras versions, measured matmul and 3x3 conv GFLOP/s for float32
  and bfloat16 (the denominators of the fraction of peak);
* ``train_step``: pretraining images/s of the training step for ResNet-18
  (CIFAR stem, 32 px, batch 256) and ResNet-50 (32 px, batch 64), float32 and
  bfloat16, with and without XLA, with the analytic model FLOPs per image and
  the fraction of the measured conv peak;
* ``profile``: one ResNet-18 step split into forward, backward, optimizer and
  loss, and a ``tf.profiler`` op-type breakdown;
* ``input_pipeline``: augmented images/s of the ``tf.data`` pipeline alone at
  32 and 224 px;
* ``loss_scaling``: NT-Xent forward+backward time and peak memory for global
  batch 256 -> 8192;
* ``export``: SavedModel ``serve`` images/s versus the in-process model;
* ``time_to_accuracy`` (``--time_to_accuracy``; minutes): wall time and top-1
  of the default ``train_then_eval`` run for each precision.

``--smoke`` runs tiny sizes of machine, train_step (ResNet-18 only, no XLA),
input_pipeline, loss_scaling and export for both precisions in about a
minute (CI runs it through tests/test_benchmarks.py). The full suite takes
long on a 2-core machine; run it in pieces with ``--sections`` and
``--merge`` (which updates the sections of an existing ``--out`` file).

Timings on a shared machine are noisy: every section records the load
average, and comparisons should use the ratios measured within one run.
``--report=PATH`` prints the Markdown tables of a results file.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ALL_SECTIONS = ("machine", "train_step", "profile", "input_pipeline", "loss_scaling",
                "export", "time_to_accuracy")
DEFAULT_SECTIONS = ("machine", "train_step", "profile", "input_pipeline", "loss_scaling",
                    "export")
SMOKE_SECTIONS = ("machine", "train_step", "input_pipeline", "loss_scaling", "export")
DEFAULT_OUT = os.path.join("benchmarks", "results.json")


def _csv(text):
    return tuple(x.strip() for x in text.split(",") if x.strip())


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, ~1 minute")
    p.add_argument("--out", default=DEFAULT_OUT, help="JSON results file")
    p.add_argument("--merge", action="store_true",
                   help="update the given sections of an existing --out file")
    p.add_argument("--sections", type=_csv, default=None,
                   help=f"comma-separated subset of {','.join(ALL_SECTIONS)}")
    p.add_argument("--time_to_accuracy", action="store_true",
                   help="also run the time_to_accuracy section (minutes)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the "
                   "first call, which traces/compiles and is itself untimed (default 0)")
    p.add_argument("--models", type=_csv, default=None, help="resnet18,resnet50")
    p.add_argument("--precisions", type=_csv, default=("float32", "bfloat16"))
    p.add_argument("--jit", type=_csv, default=None,
                   help="jit_compile settings of the train step: false,true")
    p.add_argument("--no_pipeline_rows", action="store_true",
                   help="skip the train-step rows fed by the real input pipeline")
    p.add_argument("--loss_batches", type=_csv, default=None,
                   help="NT-Xent global batch sizes")
    p.add_argument("--tta_flags", default="",
                   help="extra flags for the time_to_accuracy runs (space-separated)")
    p.add_argument("--allocator", choices=("bfc", "system", "inherit"), default="bfc",
                   help="TF's CPU allocator: bfc (what python -m simclr_tf.run uses on "
                   "CPU/GPU) sets TF_CPU_ALLOCATOR_USE_BFC=true, system sets it false, "
                   "inherit leaves the environment as it is")
    p.add_argument("--onednn", choices=("package", "tf", "on", "off"), default="package",
                   help="TF's oneDNN CPU kernels: package = what python -m simclr_tf.run "
                   "chooses (on for x86-64 CPUs with AVX2, see simclr_tf/env.py); "
                   "tf = TensorFlow's own default for this CPU; on/off = "
                   "TF_ENABLE_ONEDNN_OPTS=1/0")
    p.add_argument("--batch_size", type=int, default=None,
                   help="override the train_step/profile batch size of every model")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="print the Markdown tables of a results file and exit")
    args = p.parse_args(argv)
    if args.sections is None:
        args.sections = SMOKE_SECTIONS if args.smoke else DEFAULT_SECTIONS
    if args.time_to_accuracy and "time_to_accuracy" not in args.sections:
        args.sections = tuple(args.sections) + ("time_to_accuracy",)
    unknown = set(args.sections) - set(ALL_SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose from {ALL_SECTIONS}")
    if args.models is None:
        args.models = ("resnet18",) if args.smoke else ("resnet18", "resnet50")
    jit = args.jit or (("false",) if args.smoke else ("false", "true"))
    args.jit = tuple(j.lower() in ("true", "1", "on") for j in jit)
    if args.steps is None:
        args.steps = 2 if args.smoke else 3
    if args.warmup is None:
        args.warmup = 0  # the first call (trace, compile, one step) is the warm-up
    return args


def _git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def run_sections(args, log=print):
    from benchmarks import common

    results = {}
    if args.merge and os.path.isfile(args.out):
        with open(args.out, encoding="utf-8") as f:
            results = json.load(f)
    smoke = args.smoke
    for section in args.sections:
        log(f"[{section}]")
        start = time.perf_counter()
        load_start = common.load_average()
        if section == "machine":
            from benchmarks import machine
            data = machine.run(smoke=smoke, precisions=args.precisions)
            for name, conv in data["conv3x3"].items():
                log(f"  conv3x3 {name}: {conv['gflops_best']:.1f} GFLOP/s, matmul "
                    f"{data['matmul'][name]['gflops_best']:.1f} GFLOP/s")
        elif section == "train_step":
            from benchmarks import machine, train_step
            peaks = {p: {"wall": machine.peak(results.get("machine"), p),
                         "cpu": machine.peak(results.get("machine"), p, "gflops_per_cpu_s")}
                     for p in args.precisions}
            data = train_step.run(models=args.models, precisions=args.precisions,
                                  jits=args.jit, steps=args.steps, warmup=args.warmup,
                                  smoke=smoke, peaks=peaks,
                                  pipeline_rows=not (smoke or args.no_pipeline_rows),
                                  batch_size=args.batch_size, log=log)
            data["peaks_gflops"] = peaks
        elif section == "profile":
            from benchmarks import train_step
            data = train_step.breakdown(precisions=args.precisions, steps=args.steps,
                                        smoke=smoke, batch_size=args.batch_size, log=log)
        elif section == "input_pipeline":
            from benchmarks import input_pipeline
            data = input_pipeline.run(smoke=smoke, log=log)
        elif section == "loss_scaling":
            from benchmarks import loss_scaling
            batches = (tuple(int(b) for b in args.loss_batches) if args.loss_batches
                       else loss_scaling.SMOKE_BATCHES if smoke else loss_scaling.BATCHES)
            data = loss_scaling.run(batches=batches, repeats=2 if smoke else 3,
                                    one_process=smoke, log=log)
        elif section == "export":
            from benchmarks import export_bench
            data = export_bench.run(precisions=args.precisions, smoke=smoke, log=log)
        elif section == "time_to_accuracy":
            from benchmarks import time_to_accuracy
            data = time_to_accuracy.run(precisions=args.precisions,
                                        extra_flags=tuple(args.tta_flags.split()), log=log)
        data["meta"] = {"smoke": smoke, "seconds": time.perf_counter() - start,
                        "load_average_start": load_start,
                        "load_average_end": common.load_average(),
                        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
                        "git": _git_commit(), "command": " ".join(sys.argv),
                        "onednn_active": _onednn_active(),
                        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                        "TF_CPU_ALLOCATOR_USE_BFC": os.environ.get(
                            "TF_CPU_ALLOCATOR_USE_BFC")}
        if section == "train_step" and args.merge and "train_step" in results:
            data = _merge_train_step(results["train_step"], data)
        results[section] = data
        if args.merge and os.path.isfile(args.out):
            # Another run may have written other sections meanwhile: keep them.
            with open(args.out, encoding="utf-8") as f:
                results = dict(json.load(f), **{section: data})
        _write(results, args.out)
    return results


def _merge_train_step(old, new):
    """Adds the new rows to the old section (same row key: replaced); new meta."""
    from benchmarks import train_step

    def key(c):
        return (c["model"], c["width_multiplier"], c["image_size"], c["batch_size"])

    def row_key(r):
        return (r["precision"], r["jit_compile"], r["input"])

    configs = {key(c): c for c in old.get("configs", [])}
    for c in configs.values():
        for r in c["rows"]:
            r.setdefault("meta", old.get("meta"))
    for c in new["configs"]:
        if key(c) in configs:
            rows = {row_key(r): r for r in configs[key(c)]["rows"]}
            rows.update({row_key(r): dict(r, meta=new["meta"]) for r in c["rows"]})
            configs[key(c)]["rows"] = list(rows.values())
        else:
            configs[key(c)] = dict(c, rows=[dict(r, meta=new["meta"]) for r in c["rows"]])
    merged = dict(new, configs=list(configs.values()))
    merged["ratios"] = train_step._ratios(merged["configs"])  # pylint: disable=protected-access
    merged["meta"] = dict(new["meta"], merged_with=old.get("meta"))
    return merged


def _set_onednn(mode):
    """Fixes TF_ENABLE_ONEDNN_OPTS before TF is imported (subprocesses inherit it)."""
    if mode in ("on", "off"):
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if mode == "on" else "0"
    elif mode == "package":  # as the CLI sets it (env.tune_for_cli), then import TF
        from simclr_tf import env
        env.prefer_onednn()
        import tensorflow  # noqa: F401
    else:  # TF's own choice, made explicit for the subprocesses
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
        import tensorflow  # noqa: F401
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if _onednn_active() else "0"


def _onednn_active():
    if "tensorflow" not in sys.modules:
        return None
    from benchmarks import machine
    return machine._onednn_active()  # pylint: disable=protected-access


def _write(results, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(results), f, indent=1)
    os.replace(tmp, path)


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # NumPy scalars
        return _clean(obj.item())
    return obj


# ------------------------------------------------------------------ tables
def _f(value, digits=1):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |"
              for r in rows]
    return "\n".join(lines)


def report(results):
    """Markdown tables of a results dict."""
    out = []
    m = results.get("machine")
    if m:
        flags = ", ".join(k for k, v in m["cpu"].get("flags", {}).items() if v) or "-"
        out.append(f"**Machine**: {m['cpu']['model']}, {m['cpu']['cores']} cores "
                   f"(flags: {flags}); TensorFlow {m['tensorflow']}, Keras {m['keras']}; "
                   f"oneDNN kernels {'on' if m.get('onednn_active') else 'off'}, "
                   f"TF_CPU_ALLOCATOR_USE_BFC={m.get('cpu_allocator_bfc')}.")
        rows = [[name, _f(m["matmul"][name]["gflops_best"]),
                 _f(m["matmul"][name].get("gflops_per_cpu_s")),
                 _f(m["conv3x3"][name]["gflops_best"]),
                 _f(m["conv3x3"][name]["gflops_median"]),
                 _f(m["conv3x3"][name].get("gflops_per_cpu_s"))] for name in m["conv3x3"]]
        out.append(_table(["precision", "matmul GFLOP/s (best)", "matmul GFLOP per CPU-s",
                           "conv3x3 GFLOP/s (best)", "conv3x3 GFLOP/s (median)",
                           "conv3x3 GFLOP per CPU-s"], rows))
        out.append(_meta(m))
    t = results.get("train_step")
    if t:
        rows = []
        for c in t["configs"]:
            for r in c["rows"]:
                rows.append([f"{c['model']} x{c['width_multiplier']:g} {c['image_size']}px "
                             f"b{c['batch_size']}", r["precision"], _f(r["jit_compile"]),
                             r["input"], _f(r["images_per_s"], 2), _f(r["step_s"], 2),
                             _f(r.get("step_cpu_s"), 2),
                             _f(r.get("images_per_s_idle_estimate"), 2),
                             _f(c["flops_per_image"] / 1e9, 2),
                             _f(r.get("model_gflops_per_cpu_s")),
                             _f(r.get("peak_fraction"), 2),
                             _f(r.get("peak_fraction_fp32"), 2),
                             _f(r.get("peak_fraction_cpu"), 2),
                             _f(r["first_call_s"])])
        out.append(_table(["config", "precision", "XLA", "input", "images/s (wall)",
                           "step s (wall)", "step CPU-s", "images/s idle est.",
                           "GFLOP/image", "GFLOP per CPU-s", "of conv peak (wall, same prec.)",
                           "of fp32 conv peak (wall)", "of conv peak (per CPU-s, same prec.)",
                           "first call s"], rows))
        if t.get("ratios"):
            out.append(_table(["ratio (same run)", "value"],
                              [[k, _f(v, 2)] for k, v in t["ratios"].items()]))
        out.append(_meta(t))
    p = results.get("profile")
    if p:
        parts = ("forward", "forward_backward", "optimizer_apply", "nt_xent_fwd_bwd",
                 "full_step")
        rows = [[r["precision"], r["batch_size"]] + [
            _f(r.get("parts_cpu_s", r["parts_s"])[k], 2) for k in parts] + [
            _f(100 * r["shares_of_step"]["backward"], 0) + "%"] for r in p["rows"]]
        out.append(_table(["precision", "batch", "forward CPU-s", "forward+backward CPU-s",
                           "optimizer CPU-s", "NT-Xent fwd+bwd CPU-s", "full step CPU-s",
                           "backward share"], rows))
        for r in p["rows"]:
            if "op_profile" in r:
                top = r["op_profile"]["top"]
                out.append(f"Op types, {r['precision']} (share of summed op time): " + ", ".join(
                    f"{o['op']} {100 * o['share']:.1f}%" for o in top[:10]))
        out.append(_meta(p))
    i = results.get("input_pipeline")
    if i:
        out.append(_table(["image size", "batch", "images/s", "views/s", "blur"],
                          [[r["image_size"], r["batch_size"], _f(r["images_per_s"]),
                            _f(r["views_per_s"]), _f(r["blur"])] for r in i["rows"]]))
        out.append(_meta(i))
    ls = results.get("loss_scaling")
    if ls:
        out.append(_table(["global batch", "fwd+bwd ms", "CPU ms", "peak MB", "logits MB",
                           "peak / logits"],
                          [[r["batch_size"], _f(r.get("fwd_bwd_s", 0) * 1e3),
                            _f(r.get("cpu_s", 0) * 1e3),
                            _f(r.get("peak_mb")), _f(r.get("logits_mb")),
                            _f(r.get("peak_over_logits"), 2)] for r in ls["rows"]]))
        out.append(_meta(ls))
    e = results.get("export")
    if e:
        if "skipped" in e:
            out.append(f"Export: skipped ({e['skipped']}).")
        else:
            out.append(_table(["precision", "model", "batch", "serve images/s",
                               "in-process images/s", "serve / in-process",
                               "serve / in-process (CPU)", "export s"],
                              [[r["precision"], f"ResNet-{r['resnet_depth']} "
                                f"x{r['width_multiplier']:g} {r['image_size']}px",
                                r["batch_size"], _f(r["serve_images_per_s"]),
                                _f(r["in_process_images_per_s"]),
                                _f(r["serve_over_in_process"], 2),
                                _f(r["serve_images_per_cpu_s"]
                                   / r["in_process_images_per_cpu_s"], 2), _f(r["export_s"])]
                               for r in e["rows"]]))
        out.append(_meta(e))
    a = results.get("time_to_accuracy")
    if a:
        out.append(_table(["precision", "wall s", "CPU s", "idle est. s", "probe top-1",
                           "probe top-5", "frozen-feature linear eval top-1", "steps"],
                          [[r["precision"], _f(r.get("wall_s")), _f(r.get("cpu_s")),
                            _f(r.get("wall_s_idle_estimate")), _f(r.get("top1"), 4),
                            _f(r.get("top5"), 4), _f(r.get("feature_linear_eval_top1"), 4),
                            _f(r.get("global_step"))]
                           for r in a["rows"]]))
        out.append(_meta(a))
    return "\n\n".join(out)


def _meta(data):
    meta = data.get("meta", {})
    return (f"_load average {meta.get('load_average_start')} -> "
            f"{meta.get('load_average_end')}; {meta.get('seconds', 0):.0f} s; "
            f"{'smoke' if meta.get('smoke') else 'full'} run, {meta.get('finished')}_")


def main(argv=None):
    args = parse_args(argv)
    if args.report:
        with open(args.report, encoding="utf-8") as f:
            print(report(json.load(f)))
        return 0
    if args.allocator != "inherit":  # before TensorFlow initialises its devices
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = str(args.allocator == "bfc").lower()
    _set_onednn(args.onednn)
    start = time.perf_counter()
    results = run_sections(args)
    print()
    print(report({k: v for k, v in results.items() if k in args.sections}))
    print(f"\nwrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
