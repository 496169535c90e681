"""simclr_tf.neighbours: the grid shows the true top-k, checked on the PNG's pixels.

The expected neighbours come from a NumPy cosine on h read a second way (the
offline generator's arrays through the exported SavedModel with TFSMLayer);
each tile of the PNG must hold that image's pixels, enlarged.
"""

import csv
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from simclr_tf import neighbours
from simclr_tf.data import offline
from test_embed import build_exported, run_main, serve

TRAIN, EVAL, K, QUERIES, SCALE = "train[:120]", "test[:30]", 4, 5, 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_exported(str(tmp_path_factory.mktemp("neighbours") / "run"), seed=1)


def run_neighbours(*argv):
    return run_main(neighbours.main, *argv)


def expected_neighbours(model_dir):
    """(query rows, [q, K] train rows) from a NumPy cosine on the SavedModel's h."""
    x, _ = offline.generate("train")
    xt, _ = offline.generate("test")
    saved_model = os.path.join(model_dir, "saved_model")
    h_train = serve(saved_model, x[:120] / 255.0)["final_avg_pool"].astype(np.float64)
    h_eval = serve(saved_model, xt[:30] / 255.0)["final_avg_pool"].astype(np.float64)
    queries = np.array([0, 7, 14, 22, 29])  # round(linspace(0, 29, 5))
    a = h_eval[queries] / np.linalg.norm(h_eval[queries], axis=1, keepdims=True)
    b = h_train / np.linalg.norm(h_train, axis=1, keepdims=True)
    sims = a @ b.T
    return queries, np.argsort(-sims, axis=1, kind="stable")[:, :K], sims


@pytest.mark.slow
def test_grid_tiles_are_the_numpy_top_k(model_dir, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert run_neighbours("--model_dir", model_dir, "--dataset=offline_shapes",
                          f"--train_split={TRAIN}", f"--eval_split={EVAL}", f"--k={K}",
                          f"--num_queries={QUERIES}", f"--scale={SCALE}", "--batch_size=32",
                          "--out", png) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    queries, top, sims = expected_neighbours(model_dir)
    content = json.loads((tmp_path / "grid.json").read_text())
    assert [r["query"]["row"] for r in content["rows"]] == queries.tolist()
    assert [[n["row"] for n in r["neighbours"]] for r in content["rows"]] == top.tolist()
    for r, row in enumerate(content["rows"]):
        np.testing.assert_allclose([n["cosine"] for n in row["neighbours"]], sims[r, top[r]],
                                   atol=1e-5)

    # The pixels: each tile holds its image, enlarged SCALE times, in grid order.
    x, y = offline.generate("train")
    xt, yt = offline.generate("test")
    picture = np.asarray(Image.open(png).convert("RGB"))
    side = 32 * SCALE

    def tile(box):
        x0, y0, x1, y1 = box
        assert (x1 - x0, y1 - y0) == (side, side)
        return picture[y0:y1, x0:x1].astype(int)

    def enlarged(image):
        return np.repeat(np.repeat(image, SCALE, axis=0), SCALE, axis=1).astype(int)

    for r, row in enumerate(content["rows"]):
        query = row["query"]
        assert np.abs(tile(query["box"]) - enlarged(xt[queries[r]])).max() <= 1
        assert query["label"] == yt[queries[r]] and query["class"] == offline.CLASS_NAMES[
            yt[queries[r]]]
        lefts = [query["box"][0]] + [n["box"][0] for n in row["neighbours"]]
        assert lefts == sorted(lefts) and len(set(lefts)) == K + 1  # ranks left to right
        assert {n["box"][1] for n in row["neighbours"]} == {query["box"][1]}
        for rank, n in enumerate(row["neighbours"]):
            assert np.abs(tile(n["box"]) - enlarged(x[top[r, rank]])).max() <= 1, (r, rank)
            assert n["label"] == y[top[r, rank]]
    tops = [row["query"]["box"][1] for row in content["rows"]]
    assert tops == sorted(tops) and len(set(tops)) == QUERIES


@pytest.mark.slow
def test_map_of_the_eval_split(model_dir, tmp_path, monkeypatch, capsys):
    argv = ["--model_dir", model_dir, "--dataset=offline_shapes", f"--train_split={TRAIN}",
            f"--eval_split={EVAL}", "--k=1", "--num_queries=1", "--out", tmp_path / "g.png",
            "--map", tmp_path / "map.png", "--map_points=20"]
    with monkeypatch.context() as m:  # scikit-learn missing: one line naming the extra
        m.setitem(sys.modules, "sklearn", None)
        m.setitem(sys.modules, "sklearn.manifold", None)
        assert run_neighbours(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["simclr_tf.neighbours: error: " + neighbours.VIZ_HINT]
    assert not (tmp_path / "g.png").exists()
    pytest.importorskip("sklearn")
    assert run_neighbours(*argv) == 0
    with open(tmp_path / "map.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    _, yt = offline.generate("test")
    chosen = [int(r["row"]) for r in rows]
    assert len(chosen) == 20 == len(set(chosen)) and max(chosen) < 30
    assert [int(r["label"]) for r in rows] == yt[chosen].tolist()
    assert Image.open(tmp_path / "map.png").size == (670, 560)
