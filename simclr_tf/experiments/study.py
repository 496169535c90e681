"""``python -m simclr_tf.study --study=NAME``: the paper's ablations in one command.

Runs the grid of :mod:`simclr_tf.experiments.grids` (``augmentations``,
``projection_head``, ``temperature`` or ``batch_size``) as short
pretrain + linear-eval runs and writes, in ``--study_dir`` (default
``studies/<study>``)::

    <cell>/          one model_dir per run (config.yaml, checkpoints, result.json,
                     log.txt); <cell>_s<seed>/ when --seeds names several seeds
    results.csv      one row per run: cell, seed, status, its coordinates and config
                     values (the augmentation study: protocol), top1/top5 (linear
                     probe), feature_linear_eval_top1 (frozen features h), steps,
                     wall_seconds; the projection_head study adds
                     feature_linear_eval_top1_z (frozen z = g(h), the paper's
                     h-vs-g(h) comparison)
    <study>.png      Figure 5 heat map, head bars, temperature / batch-size lines;
                     with several seeds the mean over seeds +-1 std

The base config is ``--config`` (default: the built-in defaults, i.e.
``configs/default.yaml``) plus any ``simclr_tf.run`` flag given here, e.g.
``--train_epochs=2``; each cell then sets its own keys and
``model_dir=<study_dir>/<cell>``. ``--protocol`` chooses how the augmentation
study builds its two branches (:mod:`simclr_tf.experiments.grids`: ``paper``,
a shared random crop, by default; ``identity`` on ``offline_shapes``).
``--seeds=0,1,2`` runs every cell once per seed; ``--summary`` prints the
per-cell mean +- std of an existing results.csv as a Markdown table
(:mod:`simclr_tf.experiments.summary`) and runs nothing.

Each cell runs in its own Python process (``--run_cell``): a crash or an
out-of-memory in one cell cannot take the study down, TF state never leaks
between cells, and the cell resumes from its checkpoints like any run. A cell
whose ``result.json`` exists is skipped; an unfinished one resumes from its
last checkpoint; a cell directory written with other settings stops the study
(pick another ``--study_dir``). ``--max_cells=N`` keeps the first N runs in
priority order (with several seeds: seed 0 of every cell of a priority, then
seed 1, ...; :func:`simclr_tf.experiments.grids.by_priority`);
``--time_budget_minutes=M`` starts no run that would, at the mean duration of
the runs so far, end after M minutes. Cut runs are reported and listed in the
CSV as ``not_run``. No SavedModel is exported.
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
from simclr_tf.errors import StudyError
from simclr_tf.experiments import grids as study_grids
from simclr_tf.experiments import plots as study_plots
from simclr_tf.experiments import summary as study_summary
from simclr_tf.runtime.run_dir import RunDir

FLAGS = flags.FLAGS


def define_flags():
    """The study's flags plus every ``simclr_tf.run`` flag (overrides of the base config)."""
    config_flags.define_flags()
    if "study" in FLAGS:
        return
    flags.DEFINE_string("study", None, f"Which study: {', '.join(study_grids.STUDIES)}.")
    flags.DEFINE_string("study_dir", None, "Output directory (default: studies/<study>).")
    flags.DEFINE_integer("max_cells", None, "Run at most the first N runs (cells x seeds, "
                         "priority order).")
    flags.DEFINE_enum("protocol", None, list(study_grids.PROTOCOLS), "Augmentation study: "
                      "paper = one random crop per image shared by both branches, the "
                      "transformations on view 1, view 2 = that crop; identity = no shared "
                      "crop, view 2 = the whole image. Default: identity on offline_shapes, "
                      "else paper.")
    flags.DEFINE_list("cells", None, "Run only these cells of the grid (names as in "
                      "results.csv, e.g. crop,color,crop+color); the others are listed "
                      "as not_run (cells). Default: every cell.")
    flags.DEFINE_list("seeds", None, "Run every cell once per seed, e.g. 0,1,2 (runs "
                      "<cell>_s<seed>; plots and --summary show mean +- std). Default: "
                      "the config's seed, one run per cell.")
    flags.DEFINE_boolean("summary", False, "Print the per-cell mean +- std table of "
                         "<study_dir>/results.csv in Markdown and run nothing.")
    flags.DEFINE_float("cell_timeout_minutes", 120, "Stop a cell still running after M "
                       "minutes (it saves a checkpoint; rerun to resume it) and count it "
                       "as failed; 0: no limit.")
    flags.DEFINE_float("time_budget_minutes", None, "Start no run expected to end after M "
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


def _read_json(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _parse_seeds(seeds):
    """``--seeds`` (ints or strings) -> tuple of distinct ints, or StudyError."""
    try:
        parsed = tuple(int(str(s).strip()) for s in seeds)
    except ValueError:
        raise StudyError(f"--seeds must be comma-separated integers such as 0,1,2, got "
                         f"{','.join(map(str, seeds))!r}.") from None
    if not parsed or len(set(parsed)) < len(parsed):
        raise StudyError(f"--seeds must list one or more distinct seeds, got "
                         f"{list(parsed)}.")
    return parsed


def _protocol(study, protocol, base):
    """The augmentation study's protocol (default from the dataset); None for others."""
    if study != "augmentations":
        if protocol is not None:
            raise StudyError(f"--protocol applies to the augmentations study only, not "
                             f"to {study!r}; leave it out.")
        return None
    if protocol not in (None,) + study_grids.PROTOCOLS:
        raise StudyError(f"Unknown protocol {protocol!r}: allowed protocols are "
                         f"{', '.join(study_grids.PROTOCOLS)}.")
    if base.shared_augmentations is not None:
        raise StudyError("shared_augmentations is set by the augmentation study's "
                         "--protocol (paper: crop, identity: none); leave it out.")
    return protocol or study_grids.default_protocol(base.dataset)


def cell_configs(study, study_dir, config_path=None, overrides=None, protocol=None,
                 seeds=None):
    """``[(cell, Config)]`` of a study in grid order (a cell's seeds together),
    every config validated.

    ``protocol``: the augmentation study's (:data:`grids.PROTOCOLS`; None: the
    dataset's default). ``seeds``: run each cell once per seed (None: once,
    with the base config's seed).
    """
    if study not in study_grids.STUDIES:
        raise StudyError(f"Unknown study {study!r}: allowed studies are "
                         f"{', '.join(study_grids.STUDIES)}.")
    bad = sorted(set(overrides or {}) & set(_FORBIDDEN))
    if bad:
        raise StudyError(f"--{bad[0]} is set by the study for each cell; leave it out "
                         "(cells go to --study_dir/<cell>).")
    if seeds is not None and "seed" in (overrides or {}):
        raise StudyError("Give either --seed or --seeds, not both (--seeds sets each "
                         "run's seed).")
    base = config_lib.resolve(config_path, overrides)
    seeds = (base.seed,) if seeds is None else _parse_seeds(seeds)
    cells = study_grids.with_seeds(
        study_grids.grid(study, _protocol(study, protocol, base)), seeds)
    fixed = {"mode": "train_then_eval", "train_mode": "pretrain"}
    out = []
    for cell in cells:
        values = {**cell.overrides, **fixed,
                  "model_dir": os.path.join(study_dir, cell.run_name)}
        try:
            cfg = config_lib.from_dict(values, base).validate()
        except config_lib.ConfigError as e:
            raise StudyError(f"Cell {cell.run_name!r} has an invalid config: {e}") from None
        out.append((cell, cfg))
    return out


def _check_same_settings(cfg):
    """Refuses a cell directory whose config.yaml holds other settings."""
    path = os.path.join(cfg.model_dir, "config.yaml")
    if not os.path.exists(path):
        return
    old = config_lib.resolve(path).to_dict()
    new = cfg.to_dict()
    # mode: a cell re-evaluated with --mode=eval (config.yaml then says eval)
    # still holds the same training.
    diffs = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new
             if k not in ("model_dir", "mode") and old.get(k) != new[k]]
    if diffs:
        hint = (" (the augmentation study's --protocol sets shared_augmentations: "
                "paper = crop, identity = unset)" if old["shared_augmentations"] != new[
                    "shared_augmentations"] else "")
        raise StudyError(
            f"{cfg.model_dir!r} was run with other settings ({'; '.join(diffs[:5])})"
            f"{hint}. Use another --study_dir for these settings, or delete that "
            "directory.")


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
        json.dump({"study": study, "cell": cell.name, "seed": cfg.seed,
                   "params": cell.params}, f)
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
    row = {"study": study, "cell": cell.name, "seed": cfg.seed, "status": status,
           **cell.params}
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
              time_budget_minutes=None, log=print, cell_timeout_minutes=120,
              protocol=None, seeds=None, only_cells=None):
    """Runs (or resumes) a study; returns its rows (one dict per run, grid order).

    ``protocol``, ``seeds``: see :func:`cell_configs`; ``max_cells`` counts runs.
    ``only_cells``: names of the cells to run (every seed of each); the others
    are listed as ``not_run (cells)``; StudyError for a name not in the grid.
    Raises StudyError / ConfigError before any run for a bad study name, config
    or a study_dir holding other settings, and ImportError without matplotlib.
    """
    study_dir = study_dir or os.path.join("studies", study or "")
    cells = cell_configs(study, study_dir, config_path, overrides, protocol, seeds)
    study_plots.require_matplotlib()  # fail now, not after hours of training
    if max_cells is not None and max_cells < 1:
        raise StudyError(f"--max_cells must be >= 1, got {max_cells}.")
    for _, cfg in cells:
        _check_same_settings(cfg)
    os.makedirs(study_dir, exist_ok=True)
    order = study_grids.by_priority([c for c, _ in cells])
    if only_cells:
        unknown = sorted(set(only_cells) - {c.name for c in order})
        if unknown:
            raise StudyError(f"--cells names {', '.join(unknown)}, not cells of the "
                             f"{study} study: choose from "
                             f"{', '.join(dict.fromkeys(c.name for c in order))}.")
    wanted = [c for c in order if not only_cells or c.name in only_cells]
    selected = {c.run_name for c in wanted[:max_cells]}
    configs = {c.run_name: cfg for c, cfg in cells}
    status, durations, start = {}, [], time.monotonic()
    for number, cell in enumerate(order, 1):
        name, cfg = cell.run_name, configs[cell.run_name]
        if os.path.exists(os.path.join(cfg.model_dir, "result.json")):
            status[name] = "done"
            log(f"[{number}/{len(order)}] {name}: finished before, skipped")
        elif only_cells and cell.name not in only_cells:
            status[name] = "not_run (cells)"
        elif name not in selected:
            status[name] = "not_run (max_cells)"
        elif time_budget_minutes is not None and (
                time.monotonic() - start + (sum(durations) / len(durations) if durations
                                            else 0.0)) > 60 * time_budget_minutes:
            status[name] = "not_run (time_budget)"
        else:
            log(f"[{number}/{len(order)}] {name}: running ({cfg.model_dir})")
            ok, seconds = _run_cell(study, cell, cfg, log, cell_timeout_minutes)
            durations.append(seconds)
            status[name] = "done" if ok else "failed"
            if ok:
                log(f"  done in {seconds:.0f} s")
    rows = [_row(study, cell, cfg, status[cell.run_name]) for cell, cfg in cells]
    _write_csv(rows, os.path.join(study_dir, "results.csv"))
    metric = ("feature_linear_eval_top1"
              if any(r["feature_linear_eval_top1"] is not None for r in rows) else "top1")
    done = sum(r["status"] == "done" for r in rows)
    title = f"{study}: {metric}, {done}/{len(rows)} runs"
    if study == "augmentations":
        protocol = rows[0]["protocol"]
        title += f"\n{protocol} protocol: {study_grids.PROTOCOL_VIEWS[protocol]}"
    png = os.path.join(study_dir, f"{study}.png")
    study_plots.plot(study, rows, metric, png, title)
    for reason in ("max_cells", "time_budget"):
        cut = [c.run_name for c in order if status[c.run_name] == f"not_run ({reason})"]
        if cut:
            log(f"not run ({reason}, {len(cut)} runs): {', '.join(cut)}")
    failed = [c.run_name for c, _ in cells if status[c.run_name] == "failed"]
    if failed:
        log(f"failed ({len(failed)} runs; rerun to retry): {', '.join(failed)}")
    log(f"wrote {os.path.join(study_dir, 'results.csv')} and {png}")
    return rows


def summary_table(study=None, study_dir=None):
    """The Markdown per-cell mean +- std table of ``study_dir``'s results.csv
    (default ``studies/<study>``); StudyError when there is none."""
    if not (study or study_dir):
        raise StudyError("--summary needs --study (or --study_dir) to find results.csv.")
    path = os.path.join(study_dir or os.path.join("studies", study), "results.csv")
    if not os.path.exists(path):
        raise StudyError(f"No study results at {path!r}: run the study first "
                         "(without --summary), or pass its --study_dir.")
    return study_summary.markdown(study_summary.read_csv(path))


def _z_features(model):
    """``images -> z``: the projection head's output of ``model``'s forward pass."""
    def z_features(images, training=False):
        return model(images, training=training)["proj_head_output"]
    return z_features


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
        files.atomic_write_json(
            linear_eval.evaluate(_z_features(exp.model), cfg.data, exp.num_classes),
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
        if FLAGS.summary:
            print(summary_table(FLAGS.study, FLAGS.study_dir))
            return
        rows = run_study(FLAGS.study, FLAGS.study_dir, FLAGS.config, overrides,
                         FLAGS.max_cells, FLAGS.time_budget_minutes,
                         cell_timeout_minutes=FLAGS.cell_timeout_minutes,
                         protocol=FLAGS.protocol, seeds=FLAGS.seeds,
                         only_cells=FLAGS.cells)
    except (StudyError, config_lib.ConfigError, ImportError) as e:
        print(f"simclr_tf.study: error: {e}", file=sys.stderr)
        sys.exit(2)
    if any(r["status"] == "failed" for r in rows):
        sys.exit(1)
