"""Regenerates the flag table in docs/flags.md: python tests/update_readme.py

The table sits between the `flags:start` and `flags:end` markers and is made by
`simclr_tf.config.flag_table()` from the help strings in config/schema.py.
"""

import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from simclr_tf import config as config_lib  # noqa: E402

FLAGS_DOC = os.path.join(REPO, "docs", "flags.md")


def main():
    with open(FLAGS_DOC, encoding="utf-8") as f:
        text = f.read()
    new, count = re.subn(r"(<!-- flags:start -->\n).*?(<!-- flags:end -->)",
                         lambda m: m.group(1) + config_lib.flag_table() + "\n" + m.group(2),
                         text, flags=re.S)
    if count != 1:
        sys.exit(f"{FLAGS_DOC} must hold one flags:start/flags:end block, found {count}")
    with open(FLAGS_DOC, "w", encoding="utf-8") as f:
        f.write(new)


if __name__ == "__main__":
    main()
