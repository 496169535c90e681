"""The notebooks' install cell, tested in-process: nothing is installed, no kernel starts.

The cell's definitions (imports, settings, functions; not its final
``install_simclr_tf(...)`` call) are executed into a namespace, and its
choice of source (``find_simclr_tf``) and the pip commands it would run
(``subprocess.run`` replaced by a recorder) are checked. The notebooks
themselves run in tests/test_notebooks.py (slow).
"""

import ast
import glob
import os
import re
import types

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))


def _install_source(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c.source for c in nb.cells if "install" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, path
    return cells[0]


def _definitions(source):
    """The cell without its top-level calls (``install_simclr_tf(...)``)."""
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if not isinstance(n, ast.Expr)]
    return tree


def _cell(path=NOTEBOOKS[0], **settings):
    ns = {"__name__": "install_cell"}
    exec(compile(_definitions(_install_source(path)), path, "exec"), ns)
    ns.update(settings)
    return ns


def test_every_notebook_has_the_same_install_logic():
    bodies = {ast.dump(_definitions(_install_source(p))) for p in NOTEBOOKS}
    assert len(NOTEBOOKS) == 3 and len(bodies) == 1


def test_the_choice_wheel_then_repo_url_then_checkout_then_a_found_wheel(tmp_path):
    find = _cell()["find_simclr_tf"]
    checkout, elsewhere, uploads = tmp_path / "repo", tmp_path / "nb", tmp_path / "content"
    for d in (checkout / "colab", checkout / "simclr_tf", elsewhere, uploads):
        d.mkdir(parents=True)
    (checkout / "setup.py").write_text("")
    wheel = uploads / "simclr_tf-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    here, out = str(checkout / "colab"), str(elsewhere)
    url = "git+https://example.org/simclr_tf.git"
    # An explicit WHEEL wins everywhere, then an explicit REPO_URL.
    assert find(str(wheel), url, here, ()) == ("the wheel", str(wheel), [str(wheel)])
    assert find("", url, here, ()) == ("REPO_URL", url, [url])
    # Nothing set: the checkout the notebook sits in, editable.
    assert find("", "", here, (str(uploads),)) == (
        "the checkout", str(checkout), ["-e", str(checkout)])
    # Outside a checkout: the newest simclr_tf wheel in the search folders.
    older = elsewhere / "simclr_tf-0.1.0-py3-none-any.whl"
    older.write_bytes(b"")
    os.utime(older, (1, 1))
    (uploads / "other-1.0-py3-none-any.whl").write_bytes(b"")
    assert find("", "", out, (out, str(uploads))) == ("the wheel", str(wheel), [str(wheel)])
    # A folder that only looks like a checkout (no simclr_tf/) is not one.
    (elsewhere / ".." / "setup.py").resolve().write_text("")
    with pytest.raises(RuntimeError, match="WHEEL.*python -m build.*REPO_URL.*checkout"):
        find("", "", out, (str(tmp_path / "empty"),))
    with pytest.raises(FileNotFoundError, match="WHEEL"):
        find(str(uploads / "missing.whl"), url, here, ())


class _Pip:
    """Records ``subprocess.run`` calls instead of running pip."""

    def __init__(self):
        self.calls = []

    def run(self, args, check):
        assert args[1:4] == ["-m", "pip", "install"] and check
        self.calls.append([a for a in args[4:] if a != "-q"])


@pytest.mark.parametrize("tpu", [False, True], ids=["cpu", "tpu"])
def test_the_pip_commands_and_the_line_that_names_the_source(tpu, tmp_path, monkeypatch, capsys):
    wheel = tmp_path / "simclr_tf-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    ns = _cell(WHEEL=str(wheel), IN_COLAB=False)
    pip = _Pip()
    ns["subprocess"] = types.SimpleNamespace(run=pip.run)
    ns["metadata"] = types.SimpleNamespace(  # no TensorFlow installed: it is installed first
        version=lambda dist: None, PackageNotFoundError=LookupError)
    ns["shutil"] = types.SimpleNamespace(which=lambda _: None)  # no nvidia-smi
    real_glob = glob.glob
    ns["glob"] = types.SimpleNamespace(  # no TPU devices: only TPU_NAME decides
        glob=lambda p: [] if p.startswith("/dev/") else real_glob(p))
    for var in ("COLAB_TPU_ADDR", "TPU_NAME", "TPU_ACCELERATOR_TYPE"):
        monkeypatch.delenv(var, raising=False)
    if tpu:
        monkeypatch.setenv("TPU_NAME", "local")
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/proc/driver/nvidia"
                        else os.path.lexists(p))
    ns["install_simclr_tf"]("matplotlib")
    w = str(wheel)
    if tpu:
        assert pip.calls == [
            ["tensorflow-tpu==2.20.0", "-f",
             "https://storage.googleapis.com/libtpu-tf-releases/index.html"],
            [*ns["TPU_REQUIREMENTS"], "matplotlib"],
            ["--no-deps", "--force-reinstall", w]]
    else:
        assert pip.calls == [["tensorflow==2.21.0"], [w, "matplotlib"],
                             ["--no-deps", "--force-reinstall", w]]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == f"simclr_tf from the wheel {w}, TensorFlow for {'TPU' if tpu else 'CPU'}"
    assert ns["SIMCLR_TF_SOURCE"] == w


def _setup_requirements():
    with open(os.path.join(REPO, "setup.py")) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [ast.literal_eval(e) for e in node.value.elts]
    raise AssertionError("setup.py has no install_requires")


def test_the_tpu_pins_are_the_same_in_the_readme_the_notebook_and_setup_py():
    ns = _cell()
    requirements = _setup_requirements()
    tf_spec = [r for r in requirements if re.match(r"tensorflow\b(?!-)", r)]
    assert len(tf_spec) == 1
    # The TPU branch installs everything simclr_tf requires except `tensorflow` itself,
    # which tensorflow-tpu provides at a version setup.py allows.
    assert sorted(ns["TPU_REQUIREMENTS"]) == sorted(set(requirements) - set(tf_spec))
    assert tf_spec[0] == "tensorflow>=2.20,<2.22" and ns["TF_TPU_VERSION"].startswith("2.20.")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    block = re.search(r"<!-- tpu-install -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README: no TPU install block"
    lines = [line.split() for line in block.group(1).strip().splitlines()]
    assert lines[0] == ["pip", "install", f"tensorflow-tpu=={ns['TF_TPU_VERSION']}", "-f",
                        "https://storage.googleapis.com/libtpu-tf-releases/index.html"]
    assert [a.strip('"') for a in lines[1]] == ["pip", "install", *ns["TPU_REQUIREMENTS"]]
    assert lines[2] == ["pip", "install", "--no-deps", "."]
