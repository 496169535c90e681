"""The benchmark suite runs end to end (smoke sizes) and writes complete JSON.

No timing is asserted: the numbers only have to exist, be finite and positive.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_SECTIONS = ("machine", "train_step", "input_pipeline", "loss_scaling", "export")


def _positive(value, what):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (what, value)
    assert math.isfinite(value) and value > 0, (what, value)


def _numbers(obj, path="results"):
    """Yields (path, value) of every number in a JSON tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_count_macs_matches_closed_form():
    from benchmarks import common

    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    dense = keras.layers.Dense(5)

    def model(x):
        h = conv(x)
        return dense(tf.reduce_mean(h, axis=(1, 2)))

    macs = common.count_macs(model, tf.TensorSpec([2, 10, 10, 3], tf.float32))
    assert macs == 2 * 10 * 10 * 3 * 3 * 3 * 8 + 2 * 8 * 5


@pytest.mark.slow
def test_smoke_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "results.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--smoke",
                           f"--out={out}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| precision |" in proc.stdout  # the printed tables
    results = json.loads(out.read_text())

    assert set(SMOKE_SECTIONS) <= set(results)
    for section in SMOKE_SECTIONS:
        meta = results[section]["meta"]
        assert meta["smoke"] is True and len(meta["load_average_start"]) == 3
    # NaN/inf would have been written as null; every number is finite.
    for path, value in _numbers(results):
        assert math.isfinite(value), path

    machine = results["machine"]
    assert machine["cpu"]["cores"] >= 1 and "avx512_bf16" in machine["cpu"]["flags"]
    for precision in ("float32", "bfloat16"):
        _positive(machine["conv3x3"][precision]["gflops_best"], f"conv {precision}")
        _positive(machine["matmul"][precision]["gflops_best"], f"matmul {precision}")

    (config,) = results["train_step"]["configs"]
    _positive(config["flops_per_image"], "flops_per_image")
    assert {r["precision"] for r in config["rows"]} == {"float32", "bfloat16"}
    for row in config["rows"]:
        for key in ("images_per_s", "step_s", "model_gflops_per_s", "peak_fraction"):
            _positive(row[key], f"train_step {row['precision']} {key}")
    _positive(results["train_step"]["ratios"]["resnet18_bf16_over_fp32_jit_false"], "ratio")

    sizes = {r["image_size"]: r for r in results["input_pipeline"]["rows"]}
    assert set(sizes) == {32, 224}
    for row in sizes.values():
        _positive(row["images_per_s"], f"pipeline {row['image_size']}")

    rows = results["loss_scaling"]["rows"]
    assert [r["batch_size"] for r in rows] == [256, 512]
    for row in rows:
        _positive(row["fwd_bwd_s"], "nt_xent time")
        _positive(row["peak_mb"], "nt_xent memory")

    export = results["export"]
    assert "skipped" not in export, export.get("skipped")
    assert {r["precision"] for r in export["rows"]} == {"float32", "bfloat16"}
    for row in export["rows"]:
        _positive(row["serve_images_per_s"], "serve")
        _positive(row["in_process_images_per_s"], "in process")
        assert row["max_abs_diff_h"] < 0.05


def test_probe_gap_sgd_probe_separates_blobs_and_not_random_labels():
    # benchmarks/probe_gap.py's third row: the probe's SGD on fixed features.
    # Ten well-separated Gaussian classes are linearly separable (a converged
    # classifier scores 100%); with shuffled labels nothing generalises (10%).
    from benchmarks import probe_gap
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 3.0, (10, 32))
    y, eval_y = rng.integers(0, 10, 2000), rng.integers(0, 10, 500)
    x = centres[y] + rng.normal(size=(2000, 32))
    eval_x = centres[eval_y] + rng.normal(size=(500, 32))
    assert probe_gap.sgd_probe(x, y, eval_x, eval_y, 10, steps=200, batch=64,
                               learning_rate=0.1) > 0.97
    shuffled = rng.permutation(y)
    assert probe_gap.sgd_probe(x, shuffled, eval_x, eval_y, 10, steps=200, batch=64,
                               learning_rate=0.1) < 0.2
