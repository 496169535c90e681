import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The order in which `pytest -n 2 --dist loadfile` hands out test files
# (CI's command). xdist's default gives out the files with the most tests
# first, which left the heaviest files (one to a dozen tests of 1-3 minutes
# each) to the end of the run, where one worker ran them while the other sat
# idle (on 2026-12-01 about 100 s of CI's 892 s). Instead, the files below
# (the heaviest, slowest first, as measured by CI's durations that day) go
# first and the many light files fill the end, so both workers finish
# together. A stale order only costs balance, never correctness: keep it
# roughly in line with `--durations=0` when a file's cost changes a lot.
HEAVIEST_FIRST = (
    "test_fault_tolerance.py", "test_distill.py", "test_convert.py", "test_cli.py",
    "test_multiworker.py", "test_pretraining_learns.py", "test_export.py",
    "test_study.py", "test_notebooks.py", "test_simclr_model.py", "test_precision.py",
    "test_bad_input.py", "test_benchmarks.py", "test_trainer.py")


def pytest_configure(config):
    # Hand out files in the order of the collected items (below), not by
    # their number of tests (xdist's --loadscope-reorder default).
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)),
                                         len(HEAVIEST_FIRST)))
