"""Timing, machine-load and FLOP-counting helpers shared by the benchmarks."""

import os
import statistics
import time

import tensorflow as tf


def load_average():
    """The 1, 5 and 15 minute load averages (other processes share the CPU)."""
    return [round(x, 2) for x in os.getloadavg()]


def sync(value=None):
    """Blocks until ``value`` (a tensor or variable, optional) is computed."""
    if value is not None:
        tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, value)


def timed(fn, repeats, warmup=1):
    """Calls ``fn()`` ``warmup`` then ``repeats`` times; returns the timed seconds.

    Returns ``(wall, cpu)``: two lists of ``repeats`` durations, wall-clock
    seconds and this process's CPU seconds (user + system, all threads).
    ``fn`` must block until its work is done (return after ``.numpy()``).

    On a machine shared with other jobs the wall time grows with the load
    while the CPU time (the core-seconds the work needed) barely moves, so
    ``cpu / cores`` estimates the wall time on an idle machine. (Threads that
    spin while waiting count as CPU time too, so it is an upper bound.)
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return wall, cpu


def cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def summary(times, cpu_times=None):
    """Median and min of the wall (and CPU) times, with all values rounded."""
    out = {"median_s": statistics.median(times), "min_s": min(times),
           "times_s": [round(t, 6) for t in times]}
    if cpu_times:
        out.update(cpu_median_s=statistics.median(cpu_times), cpu_min_s=min(cpu_times),
                   cpu_times_s=[round(t, 6) for t in cpu_times])
    return out


def count_macs(fn, input_spec):
    """Multiply-accumulates of the Conv2D/MatMul ops of ``fn(input)``'s graph.

    Traces ``fn`` for ``input_spec`` (a ``tf.TensorSpec`` with a fully known
    shape) and sums, over every convolution (``N*Ho*Wo*kh*kw*Cin*Cout``,
    depthwise ``N*Ho*Wo*kh*kw*C*m``) and every matrix product (``M*K*N``), the
    MACs given by the static shapes. These ops are exactly the conv and dense
    layers of a Keras model (the layers lower to them), so this is the
    analytic count of the model's layers, not a measurement.
    """
    graph = tf.function(fn).get_concrete_function(input_spec).graph
    return _graph_macs(graph)


def _graph_macs(graph, seen=None):
    seen = set() if seen is None else seen
    total = 0
    for op in graph.get_operations():
        kind = op.type
        if kind in ("Conv2D", "DepthwiseConv2dNative"):
            out = op.outputs[0].shape.as_list()
            filt = op.inputs[1].shape.as_list()  # kh, kw, cin, cout (or multiplier)
            n, ho, wo = out[0], out[1], out[2]
            total += n * ho * wo * filt[0] * filt[1] * filt[2] * filt[3]
        elif kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
            out = op.outputs[0].shape.as_list()
            a = op.inputs[0].shape.as_list()
            transpose_a = op.get_attr("transpose_a" if kind == "MatMul" else "adj_x")
            k = a[-2] if transpose_a else a[-1]
            batch = 1
            for d in out[:-2]:
                batch *= d
            total += batch * out[-2] * out[-1] * k
        # Keras layers are traced inline; nested functions (if any) are counted too.
        for attr in ("f", "then_branch", "else_branch", "body"):
            try:
                name = op.get_attr(attr).name
            except (ValueError, AttributeError):
                continue
            if name in seen:
                continue
            seen.add(name)
            fdef = graph._get_function(name)  # pylint: disable=protected-access
            if fdef is not None:
                total += _graph_macs(fdef.graph, seen)
    return total
