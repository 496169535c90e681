"""Every notebook in colab/ runs end to end in smoke mode on CPU.

Each notebook runs in a fresh kernel started in colab/ of this checkout, as
Jupyter would, so its install cell (tagged ``install``) installs simclr_tf from
the checkout (``pip install -e ..``; its other sources, a wheel or a URL, are
tested in-process by tests/test_notebook_install.py). The kernel's interpreter is a throwaway
virtualenv layered on the test's one (its site-packages via a .pth file): the
install lands there, TensorFlow and the other requirements are found already
installed, and the test environment is left as it was. A cell setting
``SMOKE = True`` and moving to a temporary directory (for the notebook's files)
is inserted after the cell tagged ``parameters`` (papermill's convention).
"""

import glob
import json
import os
import subprocess
import sys
import sysconfig

import nbformat
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
SMOKE_YAML = os.path.join(REPO, "configs", "smoke.yaml")

pytestmark = pytest.mark.slow


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def _prepare(path, workdir):
    nb = nbformat.read(path, as_version=4)
    cells = list(nb.cells)
    install = [i for i, c in enumerate(cells) if "install" in _tags(c)]
    params = [i for i, c in enumerate(cells) if "parameters" in _tags(c)]
    assert len(params) == 1, f"{path}: needs exactly one cell tagged 'parameters'"
    assert "SMOKE" in cells[params[0]].source
    assert install and max(install) < params[0], f"{path}: install cells come first"
    smoke = nbformat.v4.new_code_cell(
        f"SMOKE = True  # injected by tests/test_notebooks.py\nos.chdir({str(workdir)!r})")
    report = nbformat.v4.new_code_cell(
        "import json, simclr_tf\n"
        "print(json.dumps({'smoke_settings': SMOKE_SETTINGS, "
        "'simclr_tf_source': SIMCLR_TF_SOURCE, 'simclr_tf_file': simclr_tf.__file__, "
        "'sys_prefix': sys.prefix}))")
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
        assert "!pip" not in code and "pip(" not in code
        # Installs from WHEEL, REPO_URL, the checkout or a found wheel, with nothing
        # filled in (the choice itself: tests/test_notebook_install.py, in-process).
        install = "\n".join(c.source for c in tagged)
        assert "OWNER" not in install
        assert 'REPO_URL = ""' in install and 'WHEEL = ""' in install
        assert "USE_DRIVE" in code and '"tensorboard"' in code


KERNEL = "simclr_tf_notebook_test"


def _kernel_venv(root, jupyter_dir):
    """A virtualenv whose site-packages chain to this interpreter's, and a
    kernelspec (under `jupyter_dir`, for JUPYTER_PATH) that runs its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    site = subprocess.run([python, "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "parent_site.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    # An absolute argv: jupyter_client replaces a bare "python" by its own
    # interpreter, which would install into the test's environment.
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "simclr_tf notebook test", "language": "python"}))
    return root / "bin"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_smoke_mode(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # The kernel is the throwaway venv's interpreter; simclr_tf is importable
    # only once its install cell ran. TF on CPU, quietly.
    bin_dir = _kernel_venv(tmp_path / "venv", tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                  if p and os.path.realpath(p) != os.path.realpath(REPO)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(pythonpath))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    workdir = tmp_path / "work"
    workdir.mkdir()
    nb = _prepare(path, workdir)
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                            resources={"metadata": {"path": os.path.join(REPO, "colab")}})
    client.execute()

    last = nb.cells[-1].outputs
    text = "".join(o.get("text", "") for o in last if o.get("output_type") == "stream")
    report = json.loads(text.strip().splitlines()[-1])
    # The install cell ran, chose this checkout and installed it into the kernel's venv.
    assert os.path.realpath(report["simclr_tf_source"]) == os.path.realpath(REPO)
    assert os.path.realpath(report["simclr_tf_file"]).startswith(
        os.path.join(os.path.realpath(REPO), "simclr_tf", ""))
    assert os.path.realpath(report["sys_prefix"]) == os.path.realpath(tmp_path / "venv")
    install = [c for c in nb.cells if "install" in _tags(c)]
    printed = "".join(o.get("text", "") for c in install for o in c.outputs)
    assert f"simclr_tf from the checkout {report['simclr_tf_source']}, TensorFlow for" in printed, \
        printed
    settings = report["smoke_settings"]
    with open(SMOKE_YAML) as f:
        smoke = yaml.safe_load(f)
    smoke.pop("model_dir", None)
    assert settings == smoke, "the notebook's SMOKE_SETTINGS drifted from configs/smoke.yaml"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.get("output_type") == "error"]
    assert not errors
