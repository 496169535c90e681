"""Pretraining throughput of the training step, and where its time goes.

Each configuration builds an :class:`simclr_tf.runtime.Experiment` with
:func:`simclr_tf.runtime.build` (the model, task, LARS and schedule exactly as
``python -m simclr_tf.run`` builds them) and times the function that
:func:`simclr_tf.runtime.train` runs (:func:`simclr_tf.runtime.steps.make_train_steps`
around the task's :func:`~simclr_tf.runtime.steps.make_train_step`), one step
per call, on one fixed batch of real augmented views (so the input pipeline is
not measured; the ``input="pipeline"`` rows feed the real ``tf.data`` pipeline
instead). Images/s counts each source image once; it has two views, both
through the encoder.
"""

import glob
import os
import shutil
import tempfile
import time

import tensorflow as tf

from benchmarks import common, machine
from simclr_tf import config as config_lib
from simclr_tf import losses as losses_lib
from simclr_tf import runtime
from simclr_tf.runtime import steps as steps_lib

MODELS = {
    # name: (config overrides of the full run, of the smoke run)
    "resnet18": (dict(resnet_depth=18, width_multiplier=1.0, image_size=32,
                      train_batch_size=256),
                 dict(resnet_depth=18, width_multiplier=0.125, image_size=16,
                      train_batch_size=16)),
    "resnet50": (dict(resnet_depth=50, width_multiplier=1.0, image_size=32,
                      train_batch_size=64),
                 dict(resnet_depth=50, width_multiplier=0.125, image_size=16,
                      train_batch_size=8)),
}


def make_config(model, precision, smoke, model_dir, jit_compile="false", batch_size=None):
    full, small = MODELS[model]
    values = dict(small if smoke else full)
    if batch_size:
        values["train_batch_size"] = batch_size
    values = dict(values, dataset="offline_shapes", mode="train",
                  train_steps=1000, precision=precision, jit_compile=jit_compile,
                  model_dir=model_dir, proj_out_dim=128, num_proj_layers=2)
    return config_lib.resolve(None, values)


def model_flops_per_image(exp):
    """Analytic training FLOPs per source image: conv/dense MACs x2 x3 x2 views."""
    size = exp.cfg.image_size
    model = exp.model
    macs = common.count_macs(lambda x: model(x, training=False),
                             tf.TensorSpec([1, size, size, 3], tf.float32))
    return {"macs_per_view": macs, "flops_per_image": 2 * 3 * 2 * macs}


def fixed_batch(exp):
    from simclr_tf.data import pipeline
    cfg = exp.cfg
    ds, _ = pipeline.build_train_dataset(cfg.replace(seed=0).data, cfg.augment,
                                         cfg.train_batch_size)
    return next(iter(ds))


def _distributed_repeat(exp, batch):
    ds = tf.data.Dataset.from_tensors(batch).repeat()
    return iter(exp.strategy.experimental_distribute_dataset(ds))


def make_train_steps(exp, jit_compile):
    """The ``tf.function(iterator, num_steps)`` that :func:`simclr_tf.runtime.train` runs.

    The task's step with its metrics and the run's ``nonfinite_policy``; without
    the loop's ``nonfinite_step`` variable (only used to name a diverged step).
    """
    cfg, model = exp.cfg, exp.model
    metrics = steps_lib.train_metrics(exp.task.metric_names(model), cfg.nonfinite_policy)
    step_fn = steps_lib.make_train_step(model, exp.task, exp.updates, metrics,
                                        cfg.nonfinite_policy, exp.loss_scale, exp.weight_decay)
    return steps_lib.make_train_steps(step_fn, exp.strategy, exp.optimizer, jit_compile)


def time_steps(exp, iterator, jit_compile, steps, warmup, steps_per_call=1):
    """Times the training step function.

    Returns (first call s, wall s per step, CPU s per step): lists of ``steps``.
    """
    train_steps = make_train_steps(exp, jit_compile)
    n = tf.constant(steps_per_call)

    def call():
        train_steps(iterator, n)
        exp.optimizer.iterations.numpy()

    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    wall, cpu = common.timed(call, steps, warmup=warmup)
    return first, [t / steps_per_call for t in wall], [t / steps_per_call for t in cpu]


def _row(exp, flops, peaks, precision, jit, source, first, wall, cpu):
    """One result row. ``peaks``: {precision: {"wall": GFLOP/s, "cpu": GFLOP/cpu-s}}."""
    batch = exp.cfg.train_batch_size
    stats = common.summary(wall, cpu)
    images_per_s = batch / stats["median_s"]
    gflops = images_per_s * flops["flops_per_image"] / 1e9
    gflops_per_cpu_s = batch * flops["flops_per_image"] / stats["cpu_median_s"] / 1e9
    row = {"precision": precision, "jit_compile": jit, "input": source,
           "images_per_s": images_per_s, "step_s": stats["median_s"],
           "step_times_s": stats["times_s"], "step_cpu_s": stats["cpu_median_s"],
           "step_cpu_times_s": stats["cpu_times_s"],
           "images_per_s_idle_estimate": batch * common.cores() / stats["cpu_median_s"],
           "first_call_s": first, "model_gflops_per_s": gflops,
           "model_gflops_per_cpu_s": gflops_per_cpu_s,
           "load_average": common.load_average()}
    own, fp32 = peaks.get(precision) or {}, peaks.get("float32") or {}
    if own.get("wall"):
        row["peak_fraction"] = gflops / own["wall"]
    if fp32.get("wall"):
        row["peak_fraction_fp32"] = gflops / fp32["wall"]
    if own.get("cpu"):
        row["peak_fraction_cpu"] = gflops_per_cpu_s / own["cpu"]
    if fp32.get("cpu"):
        row["peak_fraction_cpu_fp32"] = gflops_per_cpu_s / fp32["cpu"]
    return row


def run(models=("resnet18", "resnet50"), precisions=("float32", "bfloat16"),
        jits=(False, True), steps=3, warmup=1, smoke=False, peaks=None,
        pipeline_rows=True, batch_size=None, log=print):
    """Returns {"configs": [...], "ratios": {...}}; ``peaks``: conv GFLOP/s."""
    peaks = peaks or {}
    configs = []
    for model in models:
        entry = None
        for precision in precisions:
            model_dir = tempfile.mkdtemp(prefix="simclr_bench_")
            try:
                exp = runtime.build(make_config(model, precision, smoke, model_dir,
                                                batch_size=batch_size))
                if entry is None:
                    cfg = exp.cfg
                    entry = {"model": model, "resnet_depth": cfg.resnet_depth,
                             "width_multiplier": cfg.width_multiplier,
                             "image_size": cfg.image_size,
                             "batch_size": cfg.train_batch_size,
                             **model_flops_per_image(exp), "rows": []}
                    configs.append(entry)
                    flops = entry
                batch = fixed_batch(exp)
                for jit in jits:
                    first, wall, cpu = time_steps(
                        exp, _distributed_repeat(exp, batch), jit, steps, warmup)
                    row = _row(exp, flops, peaks, precision, jit, "fixed batch",
                               first, wall, cpu)
                    entry["rows"].append(row)
                    log(f"  {model} {precision} jit={jit}: {row['images_per_s']:.2f} img/s "
                        f"(step {row['step_s']:.3f} s, CPU {row['step_cpu_s']:.3f} s, "
                        f"first call {first:.1f} s)")
                if pipeline_rows and model == models[0] and precision == precisions[0]:
                    # The real input pipeline, as the training loop feeds it.
                    first, wall, cpu = time_steps(
                        exp, iter(exp.train_dataset(0)), False, steps, warmup)
                    row = _row(exp, flops, peaks, precision, False, "pipeline",
                               first, wall, cpu)
                    entry["rows"].append(row)
                    log(f"  {model} {precision} jit=False input=pipeline: "
                        f"{row['images_per_s']:.2f} img/s")
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)
    return {"configs": configs, "ratios": _ratios(configs)}


def _ratios(configs):
    """Speed-ups measured within this run: bf16/fp32 and XLA/no-XLA.

    From CPU time per step (robust to other jobs on the machine); the
    wall-time ratios are in the rows.
    """
    out = {}
    for entry in configs:
        rows = {(r["precision"], r["jit_compile"], r["input"]): 1.0 / r["step_cpu_s"]
                for r in entry["rows"]}
        for jit in (False, True):
            a, b = rows.get(("float32", jit, "fixed batch")), rows.get(
                ("bfloat16", jit, "fixed batch"))
            if a and b:
                out[f"{entry['model']}_bf16_over_fp32_jit_{str(jit).lower()}"] = b / a
        for precision in ("float32", "bfloat16"):
            a, b = rows.get((precision, False, "fixed batch")), rows.get(
                (precision, True, "fixed batch"))
            if a and b:
                out[f"{entry['model']}_{precision}_xla_over_no_xla"] = b / a
            a, b = rows.get((precision, False, "fixed batch")), rows.get(
                (precision, False, "pipeline"))
            if a and b:
                out[f"{entry['model']}_{precision}_pipeline_over_fixed_batch"] = b / a
    return out


# ------------------------------------------------------------------ breakdown
def breakdown(model="resnet18", precisions=("float32", "bfloat16"), steps=3, smoke=False,
              profile=True, batch_size=None, log=print):
    """Times the parts of one step separately, and profiles one step by op type.

    Parts (each its own ``tf.function``, median of ``steps`` calls): forward
    (encoder, heads and losses in training mode, no gradients), forward +
    backward (the gradients), the optimizer's ``apply_gradients`` alone, the
    NT-Xent loss forward + backward alone, and the whole step. The op-type
    profile sums the device time of each TF op type over one step traced with
    ``tf.profiler`` (ops may overlap on the 2 inter-op threads, so the shares
    are of summed op time).
    """
    results = []
    for precision in precisions:
        model_dir = tempfile.mkdtemp(prefix="simclr_bench_")
        try:
            exp = runtime.build(make_config(model, precision, smoke, model_dir,
                                            batch_size=batch_size))
            results.append(_breakdown_one(exp, precision, steps, profile, log))
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)
    return {"model": model, "rows": results}


def _breakdown_one(exp, precision, steps, profile, log):
    model, cfg, task, optimizer = exp.model, exp.cfg, exp.task, exp.optimizer
    batch = fixed_batch(exp)
    variables = model.trainable_variables

    @tf.function
    def forward():
        loss, _ = steps_lib.compute_loss(model, task, batch, exp.weight_decay,
                                         [v for _, vs in exp.updates[1:] for v in vs])
        return loss

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            loss, _ = steps_lib.compute_loss(model, task, batch, exp.weight_decay,
                                             [v for _, vs in exp.updates[1:] for v in vs])
        return tape.gradient(loss, variables)

    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(forward_backward(), variables)]

    @tf.function
    def optimizer_only():
        optimizer.apply_gradients(zip(grads, variables))

    z = tf.random.normal([cfg.train_batch_size, cfg.proj_out_dim])

    @tf.function
    def loss_only():
        z1, z2 = z, z * 0.9 + 0.1
        with tf.GradientTape() as tape:
            tape.watch([z1, z2])
            loss, _, _ = losses_lib.nt_xent_loss(z1, z2, cfg.temperature)
        return tape.gradient(loss, [z1, z2])

    parts = {
        "forward": lambda: common.sync(forward()),
        "forward_backward": lambda: common.sync(forward_backward()),
        "optimizer_apply": lambda: (optimizer_only(), optimizer.iterations.numpy()),
        "nt_xent_fwd_bwd": lambda: common.sync(loss_only()),
    }
    row = {"precision": precision, "batch_size": cfg.train_batch_size, "parts_s": {}}
    row["parts_cpu_s"] = {}
    for name, fn in parts.items():
        stats = common.summary(*common.timed(fn, steps, warmup=1))
        row["parts_s"][name] = stats["median_s"]
        row["parts_cpu_s"][name] = stats["cpu_median_s"]
    _, wall, cpu = time_steps(exp, _distributed_repeat(exp, batch), False, steps, 1)
    row["parts_s"]["full_step"] = common.summary(wall)["median_s"]
    row["parts_cpu_s"]["full_step"] = step = common.summary(cpu)["median_s"]
    p = row["parts_cpu_s"]  # shares of CPU time: robust to other jobs
    row["shares_of_step"] = {
        "forward": p["forward"] / step,
        "backward": (p["forward_backward"] - p["forward"]) / step,
        "optimizer_apply": p["optimizer_apply"] / step,
        "nt_xent_fwd_bwd": p["nt_xent_fwd_bwd"] / step,
        "rest": (step - p["forward_backward"] - p["optimizer_apply"]) / step,
    }
    log(f"  breakdown {precision} (CPU s): " + ", ".join(f"{k} {v:.3f}" for k, v in p.items()))
    if profile:
        row["op_profile"] = profile_step(exp, batch)
    row["load_average"] = common.load_average()
    return row


def profile_step(exp, batch, top=12):
    """Summed op time by TF op type over one traced step (``tf.profiler``)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tempfile.mkdtemp(prefix="simclr_prof_")
    iterator = _distributed_repeat(exp, batch)
    train_steps = make_train_steps(exp, False)
    one = tf.constant(1)
    train_steps(iterator, one)
    exp.optimizer.iterations.numpy()
    try:
        tf.profiler.experimental.start(logdir)
        train_steps(iterator, one)
        exp.optimizer.iterations.numpy()
        tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(paths[-1], "rb") as f:
            space.ParseFromString(f.read())
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    by_type = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and "inter" not in line.name:
                continue
            for event in line.events:
                meta = plane.event_metadata[event.metadata_id]
                if ":" not in meta.name or meta.name.startswith(("Threadpool", "Executor")):
                    continue
                kind = meta.display_name or meta.name.rsplit(":", 1)[-1]
                by_type[kind] = by_type.get(kind, 0) + event.duration_ps * 1e-12
    total = sum(by_type.values()) or 1.0
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])
    out = {"summed_op_s": total,
           "top": [{"op": k, "s": v, "share": v / total} for k, v in ranked[:top]]}
    groups = {"conv_forward": ("Conv2D",),
              "conv_backward": ("Conv2DBackpropInput", "Conv2DBackpropFilter"),
              "matmul": ("MatMul", "BatchMatMulV2"),
              "elementwise_and_reductions": None,  # everything else (BN, ReLU, ...)
              "cast": ("Cast",)}
    named = {k for g in groups.values() if g for k in g}
    out["groups"] = {g: sum(v for k, v in by_type.items()
                            if (k in kinds if kinds else k not in named)) / total
                     for g, kinds in groups.items()}
    return out
