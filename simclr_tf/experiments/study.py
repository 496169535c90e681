"""``python -m simclr_tf.study --study=NAME``: the paper's ablations in one command.

Runs the grid of :mod:`simclr_tf.experiments.grids` (``augmentations``,
``projection_head``, ``temperature`` or ``batch_size``) as short
pretrain + linear-eval runs and writes, in ``--study_dir`` (default
``studies/<study>``)::

    <cell>/          one model_dir per cell (config.yaml, checkpoints, result.json, log.txt)
    results.csv      one row per cell: its coordinates and config values, status,
                     top1/top5 (linear probe), feature_linear_eval_top1 (frozen
                     features h), steps, wall_seconds; the projection_head study
                     adds feature_linear_eval_top1_z (frozen z = g(h), the
                     paper's h-vs-g(h) comparison)
    <study>.png      Figure 5 heat map, head bars, temperature / batch-size lines

The base config is ``--config`` (default: the built-in defaults, i.e.
``configs/default.yaml``) plus any ``simclr_tf.run`` flag given here, e.g.
``--train_epochs=2``; each cell then sets its own keys and
``model_dir=<study_dir>/<cell>``.

Each cell runs in its own Python process (``--run_cell``): a crash or an
out-of-memory in one cell cannot take the study down, TF state never leaks
between cells, and the cell resumes from its checkpoints like any run. A cell
whose ``result.json`` exists is skipped; an unfinished one resumes from its
last checkpoint; a cell directory written with other settings stops the study
(pick another ``--study_dir``). ``--max_cells=N`` keeps the first N cells in
priority order; ``--time_budget_minutes=M`` starts no cell that would, at the
mean duration of the cells run so far, end after M minutes. Cut cells are
reported and listed in the CSV as ``not_run``. No SavedModel is exported.
"""

import csv
import json
import os
import pathlib
import subprocess
import sys
import time

import keras
from absl import flags

from simclr_tf import config as config_lib
from simclr_tf import files, linear_eval, runtime
from simclr_tf.config import flags as config_flags
from simclr_tf.experiments import grids as study_grids
from simclr_tf.experiments import plots as study_plots
from simclr_tf.runtime.run_dir import RunDir

FLAGS = flags.FLAGS


def define_flags():
    """The study's flags plus every ``simclr_tf.run`` flag (overrides of the base config)."""
    config_flags.define_flags()
    if "study" in FLAGS:
        return
    flags.DEFINE_string("study", None, f"Which study: {', '.join(study_grids.STUDIES)}.")
    flags.DEFINE_string("study_dir", None, "Output directory (default: studies/<study>).")
    flags.DEFINE_integer("max_cells", None, "Run at most the first N cells (priority order).")
    flags.DEFINE_float("cell_timeout_minutes", 120, "Stop a cell still running after M "
                       "minutes (it saves a checkpoint; rerun to resume it) and count it "
                       "as failed; 0: no limit.")
    flags.DEFINE_float("time_budget_minutes", None, "Start no cell expected to end after M "
                       "minutes.")
    flags.DEFINE_string("run_cell", None, "Internal: train and evaluate the cell in this "
                        "directory (its config.yaml).")

RESULT_COLUMNS = ("top1", "top5", "feature_linear_eval_top1", "feature_linear_eval_top1_z",
                  "steps", "wall_seconds")
# The study sets these itself.
_FORBIDDEN = ("model_dir", "mode", "train_mode")
_TIME_FILE = "study_time.json"
_CELL_FILE = "study_cell.json"  # which study the cell belongs to (read by the child)
_Z_EVAL_FILE = "projection_eval.json"


class StudyError(ValueError):
    """A study that cannot run; the message says why."""


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def cell_configs(study, study_dir, config_path=None, overrides=None):
    """``[(cell, Config)]`` of a study in grid order, every config validated."""
    if study not in study_grids.STUDIES:
        raise StudyError(f"Unknown study {study!r}: allowed studies are "
                         f"{', '.join(study_grids.STUDIES)}.")
    bad = sorted(set(overrides or {}) & set(_FORBIDDEN))
    if bad:
        raise StudyError(f"--{bad[0]} is set by the study for each cell; leave it out "
                         "(cells go to --study_dir/<cell>).")
    base = config_lib.resolve(config_path, overrides)
    fixed = {"mode": "train_then_eval", "train_mode": "pretrain"}
    out = []
    for cell in study_grids.grid(study):
        values = {**cell.overrides, **fixed, "model_dir": os.path.join(study_dir, cell.name)}
        try:
            cfg = config_lib.from_dict(values, base).validate()
        except config_lib.ConfigError as e:
            raise StudyError(f"Cell {cell.name!r} has an invalid config: {e}") from None
        out.append((cell, cfg))
    return out


def _check_same_settings(cfg):
    """Refuses a cell directory whose config.yaml holds other settings."""
    path = os.path.join(cfg.model_dir, "config.yaml")
    if not os.path.exists(path):
        return
    old = config_lib.resolve(path).to_dict()
    new = cfg.to_dict()
    diffs = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new
             if k != "model_dir" and old.get(k) != new[k]]
    if diffs:
        raise StudyError(
            f"{cfg.model_dir!r} was run with other settings ({'; '.join(diffs[:5])}). "
            "Use another --study_dir for these settings, or delete that directory.")


# The repository root (the folder holding the simclr_tf package), for the cells' PYTHONPATH.
_PACKAGE_PARENT = pathlib.Path(__file__).resolve().parents[2]


def _stop(proc, grace_seconds=120):
    """SIGTERM (the cell saves a checkpoint at its current step), then SIGKILL."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_cell(study, cell, cfg, log, timeout_minutes=None):
    """Trains and evaluates one cell in a child process; returns (ok, seconds).

    A cell still running after ``timeout_minutes`` is stopped (SIGTERM: it saves
    a checkpoint at its current step, so a rerun resumes it) and counts as failed.
    """
    os.makedirs(cfg.model_dir, exist_ok=True)
    config_lib.save_yaml(cfg, os.path.join(cfg.model_dir, "config.yaml"))
    with open(os.path.join(cfg.model_dir, _CELL_FILE), "w", encoding="utf-8") as f:
        json.dump({"study": study, "cell": cell.name, "params": cell.params}, f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_PACKAGE_PARENT), env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # as simclr_tf.run does
    log_path = os.path.join(cfg.model_dir, "log.txt")
    time_path = os.path.join(cfg.model_dir, _TIME_FILE)
    start = time.monotonic()
    try:
        with open(log_path, "a", encoding="utf-8") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "simclr_tf.study", f"--run_cell={cfg.model_dir}"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                code = proc.wait(timeout=60 * timeout_minutes if timeout_minutes else None)
            except subprocess.TimeoutExpired:
                log(f"  stopped after {timeout_minutes} min (--cell_timeout_minutes)")
                _stop(proc)
                code = "timeout"
            except BaseException:  # Ctrl-C: stop the child; its checkpoints stay
                _stop(proc)
                raise
    finally:
        seconds = time.monotonic() - start
        total = _read_json(time_path, {}).get("wall_seconds", 0.0) + seconds
        with open(time_path, "w", encoding="utf-8") as f:
            json.dump({"wall_seconds": round(total, 1)}, f)
    if code != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read().strip().splitlines()[-3:]
        log(f"  failed (exit {code}); see {log_path}: " + " | ".join(tail))
    return code == 0, seconds


def _row(study, cell, cfg, status):
    row = {"study": study, "cell": cell.name, "status": status, **cell.params}
    row.update({k: getattr(cfg, k) for k in cell.overrides if k not in row})
    result = _read_json(os.path.join(cfg.model_dir, "result.json"), {})
    row["top1"] = result.get("top1")
    row["top5"] = result.get("top5")
    row["feature_linear_eval_top1"] = result.get("feature_linear_eval", {}).get("top1")
    if study == "projection_head":
        row["feature_linear_eval_top1_z"] = _read_json(
            os.path.join(cfg.model_dir, _Z_EVAL_FILE), {}).get("top1")
    row["steps"] = result.get("global_step")
    row["wall_seconds"] = _read_json(os.path.join(cfg.model_dir, _TIME_FILE), {}).get(
        "wall_seconds")
    return row


def _write_csv(rows, path):
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns and k not in RESULT_COLUMNS]
    columns += [k for k in RESULT_COLUMNS if any(k in row for row in rows)]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    os.replace(tmp, path)


def run_study(study, study_dir=None, config_path=None, overrides=None, max_cells=None,
              time_budget_minutes=None, log=print, cell_timeout_minutes=120):
    """Runs (or resumes) a study; returns its rows (one dict per cell, grid order).

    Raises StudyError / ConfigError before any run for a bad study name, config
    or a study_dir holding other settings, and ImportError without matplotlib.
    """
    study_dir = study_dir or os.path.join("studies", study or "")
    cells = cell_configs(study, study_dir, config_path, overrides)
    study_plots.require_matplotlib()  # fail now, not after hours of training
    if max_cells is not None and max_cells < 1:
        raise StudyError(f"--max_cells must be >= 1, got {max_cells}.")
    for _, cfg in cells:
        _check_same_settings(cfg)
    os.makedirs(study_dir, exist_ok=True)
    order = study_grids.by_priority([c for c, _ in cells])
    selected = {c.name for c in order[:max_cells]}
    configs = {c.name: cfg for c, cfg in cells}
    status, durations, start = {}, [], time.monotonic()
    for number, cell in enumerate(order, 1):
        cfg = configs[cell.name]
        if os.path.exists(os.path.join(cfg.model_dir, "result.json")):
            status[cell.name] = "done"
            log(f"[{number}/{len(order)}] {cell.name}: finished before, skipped")
        elif cell.name not in selected:
            status[cell.name] = "not_run (max_cells)"
        elif time_budget_minutes is not None and (
                time.monotonic() - start + (sum(durations) / len(durations) if durations
                                            else 0.0)) > 60 * time_budget_minutes:
            status[cell.name] = "not_run (time_budget)"
        else:
            log(f"[{number}/{len(order)}] {cell.name}: running ({cfg.model_dir})")
            ok, seconds = _run_cell(study, cell, cfg, log, cell_timeout_minutes)
            durations.append(seconds)
            status[cell.name] = "done" if ok else "failed"
            if ok:
                log(f"  done in {seconds:.0f} s")
    rows = [_row(study, cell, cfg, status[cell.name]) for cell, cfg in cells]
    _write_csv(rows, os.path.join(study_dir, "results.csv"))
    metric = ("feature_linear_eval_top1"
              if any(r["feature_linear_eval_top1"] is not None for r in rows) else "top1")
    done = sum(r["status"] == "done" for r in rows)
    title = f"{study}: {metric}, {done}/{len(rows)} cells"
    if study == "augmentations":
        title += " (view 1: 1st then 2nd transformation; view 2: identity)"
    png = os.path.join(study_dir, f"{study}.png")
    study_plots.plot(study, rows, metric, png, title)
    for reason in ("max_cells", "time_budget"):
        cut = [c.name for c in order if status[c.name] == f"not_run ({reason})"]
        if cut:
            log(f"not run ({reason}, {len(cut)} cells): {', '.join(cut)}")
    failed = [r["cell"] for r in rows if r["status"] == "failed"]
    if failed:
        log(f"failed ({len(failed)} cells; rerun to retry): {', '.join(failed)}")
    log(f"wrote {os.path.join(study_dir, 'results.csv')} and {png}")
    return rows


def _run_cell_main(cell_dir):
    """Child process: trains and evaluates the run described by cell_dir/config.yaml."""
    cfg = config_lib.resolve(os.path.join(cell_dir, "config.yaml"))
    RunDir(cfg.model_dir).check_compatible(cfg)
    keras.utils.set_random_seed(cfg.seed)
    exp = runtime.build(cfg)
    runtime.train(exp)
    cell = _read_json(os.path.join(cell_dir, _CELL_FILE), {})
    if (cell.get("study") == "projection_head" and cfg.proj_head_mode != "none"
            and cfg.feature_linear_eval):
        # Frozen-feature linear eval on z = g(h) as well (before result.json,
        # which marks the cell finished).
        model = exp.model

        def z_features(images, training=False):
            return model.projection_head(model.encoder(images, training=training),
                                         training=training)[0]

        files.atomic_write_json(
            linear_eval.evaluate(z_features, cfg.data, exp.num_classes),
            os.path.join(cell_dir, _Z_EVAL_FILE))
    result = runtime.evaluate(exp)
    print(f"result: {json.dumps(result)}")


def main(argv):
    if len(argv) > 1:
        print(f"simclr_tf.study: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(2)
    if FLAGS.run_cell:
        _run_cell_main(FLAGS.run_cell)
        return
    overrides = config_flags.overrides_from_flags()
    try:
        rows = run_study(FLAGS.study, FLAGS.study_dir, FLAGS.config, overrides,
                         FLAGS.max_cells, FLAGS.time_budget_minutes,
                         cell_timeout_minutes=FLAGS.cell_timeout_minutes)
    except (StudyError, config_lib.ConfigError, ImportError) as e:
        print(f"simclr_tf.study: error: {e}", file=sys.stderr)
        sys.exit(2)
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)
