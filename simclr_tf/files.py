"""File helpers shared by every layer: remote paths, atomic writes, temp files.

Paths may be local or any ``tf.io.gfile`` URL (``gs://...``). Everything that
replaces a file a user may already have (``config.yaml``, ``result.json``,
``train_log.jsonl``, the image-folder manifest) goes through
:func:`atomic_write`: the new content is written to a temporary file beside
the target and renamed over it, so a crash leaves the old file or the new
one, never half of one. (On object stores a rename is a copy of the object;
it is still never a partial write of the target.)

Temporary files and directories carry their owner in their name
(:func:`temp_token`: ``~host~pid~random``). A later process removes only
those whose owner is dead (:func:`owner_alive`), so a run never deletes
what another live process is writing.
"""

import json
import os
import re
import shutil
import socket
import uuid

import tensorflow as tf

_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "localhost"
# ~host~pid~random, inside a base name; the name before it holds no "~".
_OWNER = re.compile(r"~([^~/]+)~(\d+)~([0-9a-f]{8})")
# Names written before temp files carried their host: .tmp-<pid>[-<hex8>].
_LEGACY_OWNER = re.compile(r"(?:\.tmp|\.old|convert-tmp)-(\d+)(?:-[0-9a-f]{8})?(?:\.keras)?$")


def is_remote(path):
    """True for ``scheme://`` paths (GCS, S3, HDFS ...), read through tf.io.gfile."""
    return "://" in os.fspath(path)


def renames_are_atomic(path):
    """Whether renaming a directory at ``path`` is one atomic step.

    True on local disks. On object stores (``gs://``, ``s3://``) a rename
    copies and deletes object by object, so a crash can leave part of the
    tree at each name; :func:`move` finishes such a move when run again.
    """
    return not is_remote(path)


def exists(path):
    return tf.io.gfile.exists(path)


def read_text(path):
    with tf.io.gfile.GFile(path) as f:
        return f.read()


# ---------------------------------------------------------------- temp files
def temp_token():
    """``~host~pid~random``: names a temporary path after the process writing it."""
    return f"~{_HOST}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def temp_sibling(path, tag):
    """A hidden local path beside ``path``, owned by this process: ``.BASE{tag}~host~pid~rand``."""
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}{tag}{temp_token()}")


def remove_dead_siblings(path, tag):
    """Removes the :func:`temp_sibling` paths of ``path`` and ``tag`` whose writer is gone.

    Only names of that form, and only when :func:`owner_alive` says the owner
    died: a live writer's work and anything else beside ``path`` stay.
    """
    parent, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}{tag}~"
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        full = os.path.join(parent, name)
        if name.startswith(prefix) and owner_alive(full) is False:
            shutil.rmtree(full, ignore_errors=True)


def pid_alive(pid):
    """Whether process ``pid`` of this host is running (a zombie is not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:  # a killed child its parent has not reaped yet is dead too
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def owner_alive(path):
    """Whether the process that named the temporary ``path`` may still be running.

    False only for a process of this host that no longer exists; True for a
    live one and for any process of another host (it cannot be checked from
    here); None for a name that carries no owner.
    """
    name = os.path.basename(os.fspath(path).rstrip("/"))
    match = _OWNER.search(name)
    if match:
        return match.group(1) != _HOST or pid_alive(int(match.group(2)))
    match = _LEGACY_OWNER.search(name)
    if match:
        return pid_alive(int(match.group(1)))
    return None


def remove_dead_temp(directory):
    """Removes the :func:`atomic_write` temporary files of dead processes in ``directory``.

    Returns the paths removed.
    """
    removed = []
    for path in tf.io.gfile.glob(os.path.join(directory, "*.tmp[~-]*")):
        if owner_alive(path) is False:
            remove(path)
            removed.append(path)
    return removed


# -------------------------------------------------------------------- writing
def atomic_write(path, content):
    """Writes ``content`` (str or bytes) to ``path`` through a temporary file."""
    tmp = f"{path}.tmp{temp_token()}"
    mode = "wb" if isinstance(content, bytes) else "w"
    try:
        with tf.io.gfile.GFile(tmp, mode) as f:
            f.write(content)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def atomic_write_json(obj, path):
    atomic_write(path, json.dumps(obj, indent=2))


def remove(path):
    """Removes a file or a directory tree; nothing when ``path`` does not exist."""
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def move(src, dst):
    """Moves the file or tree ``src`` to ``dst``; nothing when ``src`` is gone.

    ``dst`` must not exist, or hold what an interrupted ``move(src, dst)``
    already moved: where renames are not atomic (:func:`renames_are_atomic`)
    a tree moves file by file, each file copied then deleted, so calling
    ``move`` again after a crash finishes the move. The union of ``src`` and
    ``dst`` is complete at every point.
    """
    src, dst = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
    if not tf.io.gfile.exists(src):
        return
    tf.io.gfile.makedirs(os.path.dirname(dst))
    if not tf.io.gfile.isdir(src):
        tf.io.gfile.rename(src, dst, overwrite=True)
        return
    if renames_are_atomic(src) and not tf.io.gfile.exists(dst):
        tf.io.gfile.rename(src, dst)
        return
    for root, _, names in tf.io.gfile.walk(src):
        target = dst + root[len(src):]
        tf.io.gfile.makedirs(target)
        for name in names:
            tf.io.gfile.rename(os.path.join(root, name), os.path.join(target, name),
                               overwrite=True)
    remove(src)
