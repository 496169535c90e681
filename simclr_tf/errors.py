"""The errors simclr_tf raises on purpose, in one place.

Each message names the problem and the way out, so the command-line entry
points print it as one line (exit status 2) instead of a traceback.
"""

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
