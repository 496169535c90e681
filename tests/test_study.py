"""The ablation runner (simclr_tf.study): grids, cutting, resuming, CSV and PNG."""

import csv
import json
import os

import numpy as np
import pytest

from simclr_tf.experiments import grids as study_grids
from simclr_tf.experiments import plots as study_plots
from simclr_tf.experiments import study
from simclr_tf.experiments import summary as study_summary

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
    pair = next(c for c in study_grids.grid("augmentations", "identity")
                if c.name == "sobel+noise")
    assert pair.overrides == {"view1_augmentations": "sobel,noise",
                              "view2_augmentations": "none"}
    pair = next(c for c in aug if c.name == "sobel+noise")  # paper, the default
    assert pair.overrides == {"shared_augmentations": "crop",
                              "view1_augmentations": "sobel,noise",
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
    assert (cfg.augment.view1, cfg.augment.view2) == (("crop",), ())


def test_protocols_of_the_augmentation_study(tmp_path):
    def configs(**kw):
        return {c.name: cfg for c, cfg in study.cell_configs("augmentations", "d", SMOKE, **kw)}

    # offline_shapes keeps the identity protocol of its recorded results ...
    identity = configs()["crop+color"]
    assert identity.shared_augmentations is None
    assert (identity.augment.shared, identity.augment.view1, identity.augment.view2) == (
        (), ("crop", "color"), ())
    # ... every other dataset defaults to the paper's shared crop.
    paper = configs(overrides={"dataset": "cifar10"})["crop+color"]
    assert (paper.augment.shared, paper.augment.view1, paper.augment.view2) == (
        ("crop",), ("crop", "color"), ())
    assert configs(protocol="paper")["color"].augment.shared == ("crop",)
    assert configs(overrides={"dataset": "cifar10"}, protocol="identity")[
        "color"].augment.shared == ()
    cells = [c for c, _ in study.cell_configs("augmentations", "d", SMOKE, protocol="paper")]
    assert {c.params["protocol"] for c in cells} == {"paper"}
    with pytest.raises(study.StudyError, match="--protocol applies to the augmentations "
                       "study only, not to 'temperature'"):
        study.cell_configs("temperature", "d", SMOKE, protocol="paper")
    with pytest.raises(study.StudyError, match="allowed protocols are paper, identity"):
        study.cell_configs("augmentations", "d", SMOKE, protocol="fig5")
    with pytest.raises(study.StudyError, match="shared_augmentations is set by the "
                       "augmentation study's --protocol"):
        study.cell_configs("augmentations", "d", SMOKE, {"shared_augmentations": "crop"})
    # Other studies take it as any base setting.
    assert {cfg.augment.shared for _, cfg in study.cell_configs(
        "temperature", "d", SMOKE, {"shared_augmentations": "crop"})} == {("crop",)}


def test_a_study_dir_of_the_other_protocol_is_refused_naming_it(tmp_path):
    (cell, cfg), = [(c, cfg) for c, cfg in study.cell_configs(
        "augmentations", str(tmp_path), SMOKE, protocol="identity") if c.name == "crop"]
    os.makedirs(cfg.model_dir)
    study.config_lib.save_yaml(cfg, os.path.join(cfg.model_dir, "config.yaml"))
    with pytest.raises(study.StudyError, match=r"shared_augmentations: None -> 'crop'.*"
                       r"--protocol sets shared_augmentations"):
        study.run_study("augmentations", str(tmp_path), SMOKE, protocol="paper")
    assert sorted(os.listdir(tmp_path)) == ["crop"]


def test_a_cell_re_evaluated_with_mode_eval_is_still_the_same_cell(tmp_path):
    (_, cfg), = [(c, cfg) for c, cfg in study.cell_configs(
        "augmentations", str(tmp_path), SMOKE, dict(TINY)) if c.name == "crop"]
    os.makedirs(cfg.model_dir)
    study.config_lib.save_yaml(cfg.replace(mode="eval"),
                               os.path.join(cfg.model_dir, "config.yaml"))
    study._check_same_settings(cfg)  # no refusal
    study.config_lib.save_yaml(cfg.replace(mode="eval", temperature=0.9),
                               os.path.join(cfg.model_dir, "config.yaml"))
    with pytest.raises(study.StudyError, match="temperature: 0.9 -> "):
        study._check_same_settings(cfg)


def test_seeds_name_the_runs_and_order_them_seed_major_within_a_priority():
    runs = study.cell_configs("augmentations", "d", SMOKE, seeds=["0", "1", "2"])
    assert len(runs) == 3 * 49
    assert [(c.run_name, cfg.seed, cfg.model_dir) for c, cfg in runs[:3]] == [
        ("crop_s0", 0, os.path.join("d", "crop_s0")), ("crop_s1", 1, os.path.join(
            "d", "crop_s1")), ("crop_s2", 2, os.path.join("d", "crop_s2"))]
    assert {c.name for c, _ in runs[:3]} == {"crop"}
    order = [c.run_name for c in study_grids.by_priority([c for c, _ in runs])]
    diagonal = list(study_grids.FIG5_TRANSFORMS)
    assert order[:21] == [f"{n}_s{s}" for s in range(3) for n in diagonal]
    assert order[21:27] == [f"{n}_s{s}" for s in range(3) for n in ("crop+color", "color+crop")]
    # One seed keeps today's directory names (and sets the seed).
    one = study.cell_configs("temperature", "d", SMOKE, seeds=[5])
    assert [c.run_name for c, _ in one] == [c.name for c in study_grids.grid("temperature")]
    assert {cfg.seed for _, cfg in one} == {5}
    assert {cfg.seed for _, cfg in study.cell_configs("temperature", "d", SMOKE,
                                                      {"seed": 4})} == {4}
    for seeds, message in ((["0", "x"], "comma-separated integers"),
                           ([1, 1], "distinct seeds"), ([], "one or more")):
        with pytest.raises(study.StudyError, match=message):
            study.cell_configs("temperature", "d", SMOKE, seeds=seeds)
    with pytest.raises(study.StudyError, match="either --seed or --seeds"):
        study.cell_configs("temperature", "d", SMOKE, {"seed": 1}, seeds=[0, 1])


def test_a_cut_study_with_seeds_keeps_every_cell_of_a_priority_once_first(tmp_path):
    rows = study.run_study("augmentations", str(tmp_path), SMOKE, dict(TINY),
                           max_cells=9, time_budget_minutes=0.0, seeds=[0, 1],
                           log=lambda line: None)
    assert len(rows) == 98 and [r["seed"] for r in rows[:2]] == [0, 1]
    kept = [(r["cell"], r["seed"]) for r in rows if r["status"] == "not_run (time_budget)"]
    assert sorted(kept) == sorted([(n, 0) for n in study_grids.FIG5_TRANSFORMS]
                                  + [("crop", 1), ("cutout", 1)])
    assert sum(r["status"] == "not_run (max_cells)" for r in rows) == 89
    table = _read_csv(tmp_path / "results.csv")
    assert list(table[0])[:5] == ["study", "cell", "seed", "status", "protocol"]
    assert [r["seed"] for r in table[:2]] == ["0", "1"]
    _assert_png(tmp_path / "augmentations.png")


def test_cells_keeps_only_the_named_cells_with_every_seed(tmp_path):
    rows = study.run_study("augmentations", str(tmp_path), SMOKE, dict(TINY),
                           time_budget_minutes=0.0, seeds=[0, 1],
                           only_cells=["crop+color", "color"], log=lambda line: None)
    wanted = [(r["cell"], r["seed"]) for r in rows if r["status"] != "not_run (cells)"]
    assert sorted(wanted) == [("color", 0), ("color", 1), ("crop+color", 0),
                              ("crop+color", 1)]
    with pytest.raises(study.StudyError, match="crop\\+colour, not cells"):
        study.run_study("augmentations", str(tmp_path), SMOKE, dict(TINY),
                        only_cells=["crop+colour"], log=lambda line: None)


def test_summary_is_the_mean_and_sample_std_per_cell(tmp_path, capsys):
    values = {"a": [0.1, 0.2, 0.4], "b": [0.5, None, None]}
    rows = [{"study": "temperature", "cell": cell, "seed": seed,
             "status": "done" if value is not None else "failed", "top1": value,
             "feature_linear_eval_top1": value and value / 2}
            for cell, series in values.items() for seed, value in enumerate(series)]
    study._write_csv(rows, str(tmp_path / "results.csv"))
    table = study_summary.markdown(study_summary.read_csv(tmp_path / "results.csv"))
    a = np.array(values["a"]) * 100
    assert table.splitlines()[:4] == [
        "| cell | runs done | feature_linear_eval_top1 (%) | top1 (%) |",
        "|---|---|---|---|",
        f"| a | 3/3 | {a.mean() / 2:.1f} ± {a.std(ddof=1) / 2:.1f} | "
        f"{a.mean():.1f} ± {a.std(ddof=1):.1f} |",
        "| b | 1/3 | 25.0 | 50.0 |"]
    assert "seeds 0, 1, 2" in table
    (merged,) = [r for r in study_summary.aggregate(rows, ["top1"]) if r["cell"] == "a"]
    assert merged["top1"] == pytest.approx(a.mean() / 100)
    assert merged["top1_std"] == pytest.approx(a.std(ddof=1) / 100)
    assert merged["top1_n"] == 3

    with pytest.raises(study.StudyError, match="--summary needs --study"):
        study.summary_table()

    # The CLI prints it and runs nothing; without results it exits 2.
    study.define_flags()
    flags = study.FLAGS
    for args, code in (([f"--study_dir={tmp_path}"], None),
                       ([f"--study_dir={tmp_path / 'none'}"], 2)):
        flags(["simclr_tf.study", "--summary", *args])
        try:
            if code is None:
                study.main(["simclr_tf.study"])
            else:
                with pytest.raises(SystemExit) as exit_info:
                    study.main(["simclr_tf.study"])
                assert exit_info.value.code == code
        finally:
            flags.unparse_flags()
    out, err = capsys.readouterr()
    assert table in out
    assert "No study results at" in err and not os.path.exists(tmp_path / "none")


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
    assert any("not run (time_budget, 3 runs)" in line for line in logs)
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
    assert any(line.startswith("not run (max_cells, 47 runs): color, sobel") for line in logs)
    table = _read_csv(os.path.join(out, "results.csv"))
    assert list(table[0]) == ["study", "cell", "seed", "status", "protocol", "first", "second",
                              "view1_augmentations", "view2_augmentations", "top1", "top5",
                              "feature_linear_eval_top1", "steps", "wall_seconds"]
    assert {(row["protocol"], row["seed"]) for row in table} == {("identity", "0")}
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


def test_seed_counts_give_the_fewest_and_most_runs_of_a_cell():
    # A study stopped part-way: cell a has three seeds, b two; the plot's
    # title then says "over 2-3 seeds", not "over 3".
    rows = [{"cell": "a", "seed": s} for s in (0, 1, 2)] + [{"cell": "b", "seed": s} for s in (0, 1)]
    assert study_summary.seed_counts(rows) == (2, 3)
    assert study_summary.seed_counts(rows[:3]) == (3, 3)
    assert study_summary.seed_counts([]) == (0, 0)


@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
@pytest.mark.parametrize("name", study_grids.STUDIES)
def test_plots_of_every_study(tmp_path, name, seeds):
    rows = []
    for i, cell in enumerate(study_grids.with_seeds(study_grids.grid(name), seeds)):
        value = None if i % 3 == 2 else 0.1 + 0.01 * i
        rows.append({"cell": cell.name, "seed": cell.overrides["seed"], **cell.params,
                     "top1": value, "top1_z": value and value / 2})
    path = str(tmp_path / f"{name}.png")
    study_plots.plot(name, rows, "top1", path, name)
    _assert_png(path)


@pytest.mark.slow
def test_paper_protocol_with_two_seeds_runs_the_shared_crop_per_seed(tmp_path):
    out = str(tmp_path / "aug")
    rows = study.run_study("augmentations", out, SMOKE, dict(TINY), max_cells=1,
                           protocol="paper", seeds=[0, 1], log=lambda line: None)
    done = [(r["cell"], r["seed"]) for r in rows if r["status"] == "done"]
    assert done == [("crop", 0)]
    cfg = study.config_lib.resolve(os.path.join(out, "crop_s0", "config.yaml"))
    assert (cfg.shared_augmentations, cfg.view2_augmentations, cfg.seed) == (
        "crop", "none", 0)
    with open(os.path.join(out, "crop_s0", "result.json")) as f:
        assert json.load(f)["global_step"] == 2
    assert not os.path.exists(os.path.join(out, "crop"))
    table = _read_csv(os.path.join(out, "results.csv"))
    assert {r["protocol"] for r in table} == {"paper"}
    assert {r["shared_augmentations"] for r in table} == {"crop"}
    # Every cell with both seeds: 49 x 2 rows, the second seed's under its own name.
    assert len(table) == 98 and {r["seed"] for r in table} == {"0", "1"}
    lines = {line.split(" | ")[0]: line for line in study_summary.markdown(table).splitlines()}
    assert lines["| crop"].startswith("| crop | 1/2 | ") and " - " not in lines["| crop"]
    assert lines["| crop+cutout"] == "| crop+cutout | 0/2 | - | - |"
    _assert_png(os.path.join(out, "augmentations.png"))


def test_z_of_the_projection_study_is_the_forward_pass_of_encoder_and_head():
    """The cell's z features (the model's forward pass) equal the projection head
    on the encoder's h, bit for bit, for the pretraining model with its probe."""
    import tensorflow as tf

    from simclr_tf import config as config_lib
    from simclr_tf import tasks
    cfg = config_lib.Config(image_size=16, resnet_depth=18, width_multiplier=0.25,
                            proj_out_dim=8)
    model = tasks.build_model(cfg, 5)
    images = tf.random.stateless_uniform([6, 16, 16, 3], seed=[1, 2])
    z = study._z_features(model)
    by_hand = model.projection_head(model.encoder(images, training=False),
                                    training=False)[0]
    np.testing.assert_array_equal(z(images).numpy(), by_hand.numpy())
    graph = tf.function(lambda x: (z(x), model.projection_head(
        model.encoder(x, training=False), training=False)[0]))
    a, b = graph(images)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_projection_head_cell_also_evaluates_z(tmp_path):
    cells = dict((c.name, (c, cfg)) for c, cfg in
                 study.cell_configs("projection_head", str(tmp_path), SMOKE, dict(TINY)))
    cell, cfg = cells["head_linear"]
    ok, seconds = study._run_cell("projection_head", cell, cfg, print)
    assert ok and seconds > 0
    row = study._row("projection_head", cell, cfg, "done")
    assert row["steps"] == 2
    # Second path: restore the cell's last checkpoint in this process and run
    # both frozen-feature evaluations again with simclr_tf.linear_eval; the
    # numbers must be those the cell wrote (z: projection_eval.json, h: result.json).
    from simclr_tf import config as config_lib
    from simclr_tf import linear_eval, runtime
    saved = config_lib.resolve(os.path.join(cfg.model_dir, "config.yaml"))
    exp = runtime.build(saved)
    exp.checkpointer.restore_finished("evaluate")
    model = exp.model
    assert model.projection_head is not None

    def z_of(images, training=False):
        h = model.encoder(images, training=False)
        return model.projection_head(h, training=False)[0]

    z_eval = linear_eval.evaluate(z_of, saved.data, exp.num_classes)
    h_eval = linear_eval.evaluate(model.encoder, saved.data, exp.num_classes)
    with open(os.path.join(cfg.model_dir, "projection_eval.json")) as f:
        written = json.load(f)
    for key in ("top1", "top5", "l2", "num_train", "num_eval"):
        assert written[key] == pytest.approx(z_eval[key], abs=1e-9), key
    assert row["feature_linear_eval_top1_z"] == pytest.approx(z_eval["top1"], abs=1e-9)
    assert row["feature_linear_eval_top1"] == pytest.approx(h_eval["top1"], abs=1e-9)


@pytest.mark.slow
def test_a_cell_that_runs_too_long_is_stopped_and_counted_failed(tmp_path):
    logs = []
    rows = study.run_study("temperature", str(tmp_path / "s"), SMOKE, dict(TINY),
                           max_cells=1, log=logs.append, cell_timeout_minutes=0.05)
    ran = [r for r in rows if not r["status"].startswith("not_run")]
    assert len(ran) == 1 and ran[0]["status"] == "failed", rows
    assert any("stopped after 0.05 min" in line for line in logs), logs
