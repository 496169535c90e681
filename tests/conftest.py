import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Test order under CI's `pytest -n 2 --dist loadfile`: xdist's default (files
# with the most tests first) is kept on purpose. Handing out the heaviest
# files first was measured twice and was slower both times (2026-11-30: 998 s
# against 972 s; 2026-12-01: 985 s against 892 s of tests), although it
# balances the two workers better on paper: it runs the compute-heavy tests
# (multi-process clusters, the learning checks) against each other, and on
# two cores they slow each other down more than a heavy test next to light ones.
