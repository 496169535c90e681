"""The README, docs/ and the flag table agree with the code and with each other."""

import glob
import os
import re

from simclr_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


def _readme():
    return _read("README.md")


def test_flag_table_is_current():
    text = _read("docs", "flags.md")
    table = re.search(r"<!-- flags:start -->\n(.*)\n<!-- flags:end -->", text, re.S)
    assert table, "docs/flags.md lost its flags:start/flags:end markers"
    assert table.group(1).strip() == config_lib.flag_table().strip(), (
        "docs/flags.md's flag table is stale: regenerate it with "
        "`python tests/update_readme.py`")


def test_ci_runs_the_readme_test_command():
    text = _readme()
    block = re.search(r"<!-- ci:test-command -->\n```bash\n(.*?)\n```", text, re.S)
    assert block and "pytest" in block.group(1) and 'pip install -e ".[test]"' in block.group(1)
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        assert "ci:test-command" in f.read()


def test_quick_start_runs_the_main_job():
    assert "python -m simclr_tf.run --mode=train_then_eval" in _readme().split("## Contents")[0]


def test_relative_links_point_at_files():
    """Every relative Markdown link of README.md, CHANGELOG.md and docs/ names a file
    or folder of the repository (sections moved to docs/ must stay reachable)."""
    pages = ["README.md", "CHANGELOG.md"] + sorted(
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    broken = []
    for page in pages:
        if not os.path.exists(os.path.join(REPO, page)):
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", _read(page)):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(REPO, os.path.dirname(page),
                                                 target.split("#")[0]))
            if not os.path.exists(path):
                broken.append(f"{page}: {target}")
    assert not broken, "links to missing files: " + ", ".join(broken)
