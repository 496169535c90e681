"""The ablation runner (simclr_tf.study): grids, cutting, resuming, CSV and PNG."""

import csv
import json
import os

import pytest

from simclr_tf.experiments import grids as study_grids
from simclr_tf.experiments import plots as study_plots
from simclr_tf.experiments import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.yaml")
# Two steps of the smoke model on small slices: a cell takes ~10 s on 2 cores.
TINY = {"train_steps": 2, "train_split": "train[:256]", "eval_split": "test[:128]"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = study_plots.require_matplotlib().imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_grids_priorities_and_cell_configs(tmp_path):
    aug = study_grids.grid("augmentations")
    assert len(aug) == 49 and len({c.name for c in aug}) == 49
    order = [c.name for c in study_grids.by_priority(aug)]
    assert order[:7] == list(study_grids.FIG5_TRANSFORMS)  # diagonal first
    assert order[7:9] == ["crop+color", "color+crop"]
    assert all(("crop" in n or "color" in n) for n in order[9:29])
    pair = next(c for c in aug if c.name == "sobel+noise")
    assert pair.overrides == {"view1_augmentations": "sobel,noise",
                              "view2_augmentations": "none"}
    sizes = {s: len(study_grids.grid(s)) for s in study_grids.STUDIES}
    assert sizes == {"augmentations": 49, "projection_head": 3, "temperature": 7,
                     "batch_size": 12}
    for name in study_grids.STUDIES:  # every cell's config is valid
        for cell, cfg in study.cell_configs(name, str(tmp_path), SMOKE):
            assert cfg.model_dir == os.path.join(str(tmp_path), cell.name)
            assert cfg.mode == "train_then_eval"
            for key, value in cell.overrides.items():
                if key.endswith("augmentations"):
                    continue
                assert getattr(cfg, key) == value
    cfg = {c.name: cfg for c, cfg in study.cell_configs("augmentations", "d", SMOKE)}["crop"]
    assert cfg.view_augmentations == (("crop",), ())


def test_bad_study_name_and_overrides_fail_before_any_work(tmp_path):
    with pytest.raises(study.StudyError, match="allowed studies are augmentations, "
                       "projection_head, temperature, batch_size"):
        study.run_study("colour", str(tmp_path / "s"))
    with pytest.raises(study.StudyError, match="--model_dir is set by the study"):
        study.run_study("temperature", str(tmp_path / "s"), overrides={"model_dir": "x"})
    with pytest.raises(study.config_lib.ConfigError, match="'augmentations'"):
        study.run_study("temperature", str(tmp_path / "s"),
                        overrides={"augmentations": "crop,twirl"})
    assert not os.path.exists(tmp_path / "s")


def test_cli_bad_study_name_exits_2(capsys):
    study.define_flags()
    flags = study.FLAGS
    flags(["simclr_tf.study", "--study=colour"])
    try:
        with pytest.raises(SystemExit) as exit_info:
            study.main(["simclr_tf.study"])
    finally:
        flags.unparse_flags()
    assert exit_info.value.code == 2
    assert "Unknown study 'colour'" in capsys.readouterr().err


def test_zero_time_budget_runs_nothing_but_writes_outputs(tmp_path):
    logs = []
    rows = study.run_study("projection_head", str(tmp_path), SMOKE, dict(TINY),
                           time_budget_minutes=0.0, log=logs.append)
    assert [r["status"] for r in rows] == ["not_run (time_budget)"] * 3
    assert any("not run (time_budget, 3 cells)" in line for line in logs)
    assert not os.path.exists(tmp_path / "head_none")
    _assert_png(tmp_path / "projection_head.png")
    assert len(_read_csv(tmp_path / "results.csv")) == 3


@pytest.mark.slow
def test_smoke_study_writes_csv_and_png_skips_and_resumes(tmp_path):
    out = str(tmp_path / "aug")
    logs = []
    rows = study.run_study("augmentations", out, SMOKE, dict(TINY), max_cells=2,
                           log=logs.append)
    done = [r for r in rows if r["status"] == "done"]
    assert [r["cell"] for r in done] == ["crop", "cutout"]
    assert sum(r["status"] == "not_run (max_cells)" for r in rows) == 47
    assert any(line.startswith("not run (max_cells, 47 cells): color, sobel") for line in logs)
    table = _read_csv(os.path.join(out, "results.csv"))
    assert list(table[0]) == ["study", "cell", "status", "first", "second",
                              "view1_augmentations", "view2_augmentations", "top1", "top5",
                              "feature_linear_eval_top1", "steps", "wall_seconds"]
    assert len(table) == 49
    for row in table:
        if row["status"] == "done":
            assert row["steps"] == "2" and float(row["wall_seconds"]) > 0
            for key in ("top1", "top5", "feature_linear_eval_top1"):
                assert 0.0 <= float(row[key]) <= 1.0
            assert row["view2_augmentations"] == "none"
        else:
            assert row["top1"] == "" and row["steps"] == ""
    _assert_png(os.path.join(out, "augmentations.png"))

    # Rerun: finished cells are skipped (no new process, wall time unchanged).
    time_file = os.path.join(out, "crop", "study_time.json")
    with open(time_file) as f:
        before = json.load(f)
    logs.clear()
    again = study.run_study("augmentations", out, SMOKE, dict(TINY), max_cells=2,
                            log=logs.append)
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]
    assert sum("finished before, skipped" in line for line in logs) == 2
    with open(time_file) as f:
        assert json.load(f) == before

    # An interrupted cell (checkpoint, no result.json) resumes from its checkpoint.
    os.remove(os.path.join(out, "cutout", "result.json"))
    study.run_study("augmentations", out, SMOKE, dict(TINY), max_cells=2, log=logs.append)
    with open(os.path.join(out, "cutout", "log.txt")) as f:
        assert "resumed from" in f.read()
    assert os.path.exists(os.path.join(out, "cutout", "result.json"))

    # Other settings in the same study_dir are refused before any work.
    with pytest.raises(study.StudyError, match="train_steps: 2 -> 3"):
        study.run_study("augmentations", out, SMOKE, {**TINY, "train_steps": 3},
                        max_cells=2)


@pytest.mark.parametrize("name", study_grids.STUDIES)
def test_plots_of_every_study(tmp_path, name):
    rows = []
    for i, cell in enumerate(study_grids.grid(name)):
        value = None if i % 3 == 2 else 0.1 + 0.01 * i
        rows.append({**cell.params, "top1": value, "top1_z": value and value / 2})
    path = str(tmp_path / f"{name}.png")
    study_plots.plot(name, rows, "top1", path, name)
    _assert_png(path)


@pytest.mark.slow
def test_projection_head_cell_also_evaluates_z(tmp_path):
    cells = dict((c.name, (c, cfg)) for c, cfg in
                 study.cell_configs("projection_head", str(tmp_path), SMOKE, dict(TINY)))
    cell, cfg = cells["head_linear"]
    ok, seconds = study._run_cell("projection_head", cell, cfg, print)
    assert ok and seconds > 0
    row = study._row("projection_head", cell, cfg, "done")
    assert 0.0 <= row["feature_linear_eval_top1_z"] <= 1.0
    assert 0.0 <= row["feature_linear_eval_top1"] <= 1.0 and row["steps"] == 2


@pytest.mark.slow
def test_a_cell_that_runs_too_long_is_stopped_and_counted_failed(tmp_path):
    logs = []
    rows = study.run_study("temperature", str(tmp_path / "s"), SMOKE, dict(TINY),
                           max_cells=1, log=logs.append, cell_timeout_minutes=0.05)
    ran = [r for r in rows if not r["status"].startswith("not_run")]
    assert len(ran) == 1 and ran[0]["status"] == "failed", rows
    assert any("stopped after 0.05 min" in line for line in logs), logs
