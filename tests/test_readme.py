"""The README's flag table and commands agree with the code."""

import os
import re

from simclr_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        return f.read()


def test_flag_table_is_current():
    text = _readme()
    table = re.search(r"<!-- flags:start -->\n(.*)\n<!-- flags:end -->", text, re.S)
    assert table, "README.md lost its flags:start/flags:end markers"
    assert table.group(1).strip() == config_lib.flag_table().strip(), (
        "README flag table is stale: regenerate it with "
        "`python tests/update_readme.py`")


def test_ci_runs_the_readme_test_command():
    text = _readme()
    block = re.search(r"<!-- ci:test-command -->\n```bash\n(.*?)\n```", text, re.S)
    assert block and "pytest" in block.group(1) and 'pip install -e ".[test]"' in block.group(1)
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        assert "ci:test-command" in f.read()


def test_quick_start_runs_the_main_job():
    assert "python -m simclr_tf.run --mode=train_then_eval" in _readme().split("## Contents")[0]
