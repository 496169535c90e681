"""A model_dir is the user's work: commands other than training leave its config alone."""

import os
import subprocess
import sys

import pytest

SMOKE = ["--config=smoke", "--train_steps=2", "--checkpoint_steps=2", "--feature_linear_eval=false",
         "--knn_eval=false"]


def _cli(*flags):
    return subprocess.run([sys.executable, "-m", "simclr_tf.run", *flags], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_eval_with_other_flags_leaves_the_runs_config_alone(tmp_path):
    run = str(tmp_path / "run")
    trained = _cli("--mode=train", f"--model_dir={run}", *SMOKE)
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(os.path.join(run, "config.yaml")) as f:
        before = f.read()
    evaluated = _cli("--mode=eval", f"--model_dir={run}", *SMOKE, "--temperature=0.9",
                     "--learning_rate=0.05")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    with open(os.path.join(run, "config.yaml")) as f:
        assert f.read() == before
    assert "temperature: 0.2" in before and "mode: train\n" in before
    # The original training command still resumes (here: finds the run finished).
    again = _cli("--mode=train", f"--model_dir={run}", *SMOKE)
    assert again.returncode == 0, again.stderr[-3000:]
