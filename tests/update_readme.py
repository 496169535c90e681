"""Regenerates the README's flag table: python tests/update_readme.py"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from simclr_tf import config as config_lib  # noqa: E402

path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
with open(path, encoding="utf-8") as f:
    text = f.read()
text = re.sub(r"(<!-- flags:start -->\n).*?(<!-- flags:end -->)",
              lambda m: m.group(1) + config_lib.flag_table() + "\n" + m.group(2), text,
              flags=re.S)
with open(path, "w", encoding="utf-8") as f:
    f.write(text)
