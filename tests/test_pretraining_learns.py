"""Short SimCLR pretraining on the built-in dataset beats the same encoder at
random initialisation (issue #3; the numbers of the full demo are in
BENCHMARKS.md).

This is the end-to-end check that the pieces learn together: augmentations,
ResNet, projection head, NT-Xent, LARS and the schedule. Both numbers come
from the same frozen-feature linear evaluation (logistic regression on h,
``simclr_tf.linear_eval``) of the same encoder, before and after training.
"""

import pytest

from simclr_tf import config as config_lib
from simclr_tf import linear_eval
from simclr_tf import runtime

# 200 steps (about two minutes on 2 CPU cores): measured on a 2-core AVX-512
# Xeon (2026-11-30, the official loss scale and ResNet layout), random init ->
# after 200 steps: seed 0 (this test) 0.149 -> 0.281 (+13.2 points), seed 1
# 0.160 -> 0.308 (+14.8). The asked-for gain of 6 points is less than half the
# smaller measured one and six standard errors of a top-1 on the 2,000 test
# images (< 0.01 each), so another CPU's floating-point order (which acts like
# another seed) still passes. (At 120 steps the gains were only 9.3 and 3.9.)
STEPS = 200
MIN_GAIN = 0.06


@pytest.mark.slow
def test_short_pretraining_beats_random_init(tmp_path):
    import keras

    cfg = config_lib.resolve(None, dict(
        mode="train", model_dir=str(tmp_path / "run"), train_steps=STEPS,
        train_batch_size=128, warmup_epochs=0.1, checkpoint_steps=10_000,
        feature_linear_eval=False, knn_eval=False, seed=0))
    keras.utils.set_random_seed(cfg.seed)
    exp = runtime.build(cfg)
    before = linear_eval.evaluate(exp.model.encoder, cfg.data, 10)["top1"]
    runtime.train(exp)
    after = linear_eval.evaluate(exp.model.encoder, cfg.data, 10)["top1"]
    print(f"frozen-feature linear eval top-1: random init {before:.4f}, "
          f"after {STEPS} steps {after:.4f}")
    assert after >= before + MIN_GAIN, (before, after)
