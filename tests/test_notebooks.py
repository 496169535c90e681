"""Every notebook in colab/ runs end to end in smoke mode on CPU.

Cells tagged ``install`` are skipped (CI installs the package itself); a cell
setting ``SMOKE = True`` is inserted after the cell tagged ``parameters``
(papermill's convention). Each notebook runs in a fresh kernel in its own
temporary directory with this checkout on ``PYTHONPATH``.
"""

import glob
import json
import os
import sys

import nbformat
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
SMOKE_YAML = os.path.join(REPO, "configs", "smoke.yaml")

pytestmark = pytest.mark.slow


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def _prepare(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "install" not in _tags(c)]
    params = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    assert len(params) == 1, f"{path}: needs exactly one cell tagged 'parameters'"
    assert "SMOKE" in cells[params[0]].source
    smoke = nbformat.v4.new_code_cell("SMOKE = True  # injected by tests/test_notebooks.py")
    report = nbformat.v4.new_code_cell(
        "import json\nprint(json.dumps({'smoke_settings': SMOKE_SETTINGS}))")
    nb.cells = cells[:params[0] + 1] + [smoke] + cells[params[0] + 1:] + [report]
    return nb


def test_there_are_three_notebooks_with_install_and_parameters_cells():
    names = sorted(os.path.basename(p) for p in NOTEBOOKS)
    assert names == ["pretrain_image_folder.ipynb", "pretrain_linear_eval_tpu.ipynb",
                     "reuse_saved_model.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        tagged = [c for c in nb.cells if "install" in _tags(c)]
        assert tagged, f"{path}: no install cell"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.get("outputs"), f"{path}: commit notebooks without outputs"
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code"
                         and "install" not in _tags(c))
        # They drive the package instead of re-implementing it.
        assert "from simclr_tf import" in code
        assert "!pip" not in code and "pip_install" not in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # The kernel is this interpreter (the kernelspec's argv says "python"), with
    # this checkout importable and TF on CPU quietly.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _prepare(path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()

    last = nb.cells[-1].outputs
    text = "".join(o.get("text", "") for o in last if o.get("output_type") == "stream")
    settings = json.loads(text.strip().splitlines()[-1])["smoke_settings"]
    with open(SMOKE_YAML) as f:
        smoke = yaml.safe_load(f)
    smoke.pop("model_dir", None)
    assert settings == smoke, "the notebook's SMOKE_SETTINGS drifted from configs/smoke.yaml"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors
