"""The errors simclr_tf raises on purpose, in one place.

Each message names the problem and the way out, so the command-line entry
points print it as one line (exit status 2) instead of a traceback.
"""

import contextlib
import errno
import re


class ConfigError(ValueError):
    """An invalid configuration: the message names the key and the fix."""


class SubsetError(ConfigError):
    """An invalid label subset (``label_fraction`` / ``label_subset_file``)."""


class StudyError(ValueError):
    """A study (``python -m simclr_tf.study``) that cannot run: a bad study name, cell,
    seed list or protocol, or no results to summarise; the message says why."""


class RunError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class Preempted(RunError):
    """The run was asked to stop (SIGTERM) and saved a checkpoint at its current step.

    Rerunning the same command resumes at that step. ``exit_code`` is the
    conventional status of a process ended by SIGTERM (128 + 15).
    """

    exit_code = 143


class ConversionError(ValueError):
    """An official SimCLR export that cannot be converted; the message names the variable."""


class NotSimCLRExportError(ValueError):
    """A path exists but does not hold a ``simclr_tf`` export.

    Raised by the export readers for a directory without a SavedModel, another
    program's SavedModel or ``.keras`` file, and the like. A path that does
    not exist raises ``FileNotFoundError`` instead.
    """


def short_tf_error(error):
    """The first line of a TF error message, without the ``{{function_node ...}}`` prefix."""
    text = (str(getattr(error, "message", "") or error).strip().splitlines() or [""])[0]
    return re.sub(r"^\{\{[^}]*\}\}\s*", "", text)[:300]


# errno values of a write that found no room: the disk (ENOSPC) or the user's quota (EDQUOT).
_NO_SPACE_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_SPACE_TEXT = ("no space left on device", "disk quota exceeded")
_TF_RESOURCE_EXHAUSTED = 8  # tf.errors.RESOURCE_EXHAUSTED: TF's code for ENOSPC and EDQUOT


def is_disk_full(error):
    """Whether ``error`` is a write that found the disk (or the quota) full.

    An OSError with ENOSPC or EDQUOT (Python's own writes: ``open``, keras
    saving), or a TensorFlow error (``tf.io.gfile``, checkpoint saves) with
    code RESOURCE_EXHAUSTED whose message says so. Checked by duck typing, so
    this module stays importable before TensorFlow.
    """
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return True
    if getattr(error, "error_code", None) == _TF_RESOURCE_EXHAUSTED or isinstance(error, OSError):
        text = str(getattr(error, "message", None) or error).lower()
        return any(t in text for t in _NO_SPACE_TEXT)
    return False


def disk_full_error(path, what, kept):
    """The :class:`RunError` for a write of ``what`` at ``path`` that found the disk full."""
    return RunError(
        f"Could not write {what} {str(path)!r}: no space left on device; {kept}. Free "
        "disk space (or pass another --model_dir) and rerun the same command to "
        "continue from the last checkpoint.")


@contextlib.contextmanager
def writing(path, what, kept="the previous state is kept"):
    """Turns a full disk while the block writes ``path`` into one-line :class:`RunError`.

    Any other error passes through unchanged. Use it around each write of the
    run's state::

        with errors.writing(prefix, "the checkpoint",
                            "the previous checkpoint is kept"):
            manager.save(step)

    Args:
        path: the file (or checkpoint prefix) being written, named in the message.
        what: what it is, e.g. ``"the checkpoint"``, ``"result.json"``.
        kept: what the user still has, e.g. ``"the previous result.json is kept"``.
    """
    try:
        yield
    except Exception as e:  # noqa: BLE001  (re-raised unless the disk is full)
        if not is_disk_full(e):
            raise
        raise disk_full_error(path, what, kept) from None
