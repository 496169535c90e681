""".ci/run on a developer's checkout: it deletes nothing it did not create in that run.

The script runs for real in a temporary copy of the checkout whose README test
command only makes a ``.venv`` (or fails), with a fake ``python`` (``PYTHON``)
standing in for the second pass's venv, pip install and smoke run, so each
case takes well under a second.
"""

import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASIDE = ".venv.set-aside-by-ci"

FAKE_PYTHON = """#!/usr/bin/env bash
# "-m venv DIR": a venv whose python is this script and whose simclr-tf writes
# the files the smoke check looks for; "-c CODE": prints a site-packages folder
# beside this script (what .ci/run asks of sysconfig); anything else (pip
# install, the import check) succeeds.
if [ "$1" = "-c" ]; then
  site="$(dirname "$0")/../site-packages"
  mkdir -p "$site" && echo "$site"
  exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  cat > "$3/bin/simclr-tf" <<'SMOKE'
#!/usr/bin/env bash
for arg in "$@"; do case "$arg" in --model_dir=*) dir="${arg#--model_dir=}";; esac; done
mkdir -p "$dir/saved_model"
touch "$dir/result.json" "$dir/config.yaml" "$dir/saved_model/saved_model.pb"
SMOKE
  chmod +x "$3/bin/simclr-tf"
fi
"""


def _checkout(tmp_path, test_command):
    """A copy of the checkout's .ci/run under a README whose test command is ``test_command``."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, ".ci", "run"), repo / ".ci" / "run")
    (repo / "README.md").write_text(
        f"<!-- ci:test-command -->\n```bash\n{test_command}\n```\n<!-- /ci:test-command -->\n")
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return repo, fake


def _run(repo, fake, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHON=str(fake), TMPDIR=str(scratch))
    return subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True,
                          text=True, timeout=60)


def _developer_venv(repo, name=".venv"):
    (repo / name).mkdir()
    (repo / name / "mine").write_text("the developer's venv")


# The README command makes CI's own .venv (and checks the developer's is out of the way),
# with a python (the fake, put there by the test) and an activate script; its test part
# runs that python.
MAKES_VENV = ("test ! -e .venv && mkdir -p .venv/bin && touch .venv/made-by-ci && "
              "cp \"$PYTHON\" .venv/bin/python && "
              "echo 'PATH=\"$PWD/.venv/bin:$PATH\"' > .venv/bin/activate && python -m pytest")


def test_a_set_aside_venv_left_by_a_killed_run_is_refused_and_kept(tmp_path):
    """A killed run left the developer's venv set aside and its own .venv: the
    rerun deletes neither, runs nothing and says how to move it back."""
    repo, fake = _checkout(tmp_path, MAKES_VENV)
    _developer_venv(repo, ASIDE)
    (repo / ".venv").mkdir()
    (repo / ".venv" / "made-by-ci").write_text("")
    r = _run(repo, fake, tmp_path)
    assert r.returncode != 0
    assert ASIDE in r.stderr and "mv .venv.set-aside-by-ci .venv" in r.stderr, r.stderr
    assert (repo / ASIDE / "mine").read_text() == "the developer's venv"
    assert (repo / ".venv" / "made-by-ci").exists()
    assert os.listdir(tmp_path / "tmp") == []  # no work directory made either


def test_the_developers_venv_is_put_back_and_ci_removes_only_its_own(tmp_path):
    repo, fake = _checkout(tmp_path, MAKES_VENV)
    _developer_venv(repo)
    r = _run(repo, fake, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.listdir(repo / ".venv") == ["mine"]
    assert not (repo / ASIDE).exists()
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("developer_venv", [True, False])
def test_a_failing_test_command_still_restores_the_checkout(tmp_path, developer_venv):
    repo, fake = _checkout(tmp_path, MAKES_VENV.replace("&& python -m pytest",
                                                        "&& exit 3 && python -m pytest"))
    if developer_venv:
        _developer_venv(repo)
    r = _run(repo, fake, tmp_path)
    assert r.returncode != 0
    if developer_venv:
        assert os.listdir(repo / ".venv") == ["mine"]
    else:
        assert not (repo / ".venv").exists()
    assert not (repo / ASIDE).exists()
