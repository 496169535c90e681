"""Progress lines for long steps that are not training: ``what: n/total (rate/s, ETA)``.

Training has its progress bar; evaluation, the feature extraction of the
frozen-feature evaluation and the first scan of a large image folder log
through :class:`Progress` at most every ``every`` seconds, so a long step is
never silent and a short one prints one line at the end.
"""

import time

from absl import logging


class Progress:
    """Counts work done and logs it at most every ``every`` seconds.

    Args:
        what: what is being done ("feature extraction on 'train'").
        total: how many units in all, or None when unknown.
        unit: the unit's name ("images", "files").
        every: seconds between two lines (the last line is always written).
        log: where a line goes (default: absl ``logging.info``).

    Example::

        progress = Progress("evaluation", total=10000, unit="images")
        for batch in batches:
            ...
            progress.update(len(batch))
        progress.done()
    """

    def __init__(self, what, total=None, unit="images", every=10.0, log=None):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.log = log or (lambda line: logging.info("%s", line))
        self.count = 0
        self.start = self._last = time.monotonic()

    def line(self):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.count / elapsed
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        text = f"{self.what}: {done} {self.unit} ({rate:.0f} {self.unit}/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f", ETA {(self.total - self.count) / rate:.0f} s"
        return text + ")"

    def update(self, n=1):
        self.count += int(n)
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log(self.line())

    def done(self):
        self.log(f"{self.line()}, done in {time.monotonic() - self.start:.1f} s")
