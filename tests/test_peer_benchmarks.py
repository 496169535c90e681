"""The peer benchmarks' own arithmetic, without the peer (no torch, no subprocess).

benchmarks/peer_pipeline.py and benchmarks/peer_lightly.py run the PyTorch side
in another virtual environment; what they compute in ours is checked here:
the per-round ratios and the cores an accelerator needs, and the scoring of
saved h with the package's frozen-feature protocol and kNN.
"""

import numpy as np

from benchmarks import peer_lightly, peer_pipeline


def test_pipeline_summary_ratios_and_cores():
    rows = [{"side": side, "cores": 1, "round": r, "pairs_per_s": rate * f,
             "pairs_per_cpu_s": rate}
            for r, f in ((0, 1.0), (1, 0.5), (2, 1.0))
            for side, rate in (("simclr_tf", 150.0), ("torchvision", 100.0))]
    (line,) = peer_pipeline.summarize(rows)
    assert line["rounds"] == 3 and line["ratio_pairs_per_s"] == 1.5
    assert line["ratio_pairs_per_cpu_s"] == 1.5 and line["ours_pairs_per_s"] == 150.0
    assert peer_pipeline.cores_needed(1200, 150.0) == 8
    assert peer_pipeline.cores_needed(1200, 149.0) == 9
    assert "| 1.50x | 1.50x | 8 / 12 |" in peer_pipeline.table([line])


def test_lightly_scoring_of_saved_features(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 8))
    for split, n in (("train", 60), ("test", 30)):
        y = np.arange(n, dtype=np.int32) % 3
        np.save(tmp_path / f"{split}_h.npy", (centres[y] + 0.1 * rng.normal(0, 1, (n, 8)))
                .astype(np.float32))
        np.save(tmp_path / f"{split}_y.npy", y)
    scores = peer_lightly.evaluate_saved(str(tmp_path))
    assert scores["linear_top1"] == 1.0 and scores["knn_top1"] == 1.0
    results = {"runs": {"ours": {"epochs": [{"epoch": 2, "wall_s": 10.4, **scores}]}}}
    assert "| 2 | ours | 10 | 1.0000 | 1.0000 |" in peer_lightly.table(results)
