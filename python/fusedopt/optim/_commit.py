"""The commit of a step that an exception from a signal handler (a
KeyboardInterrupt) cannot leave half done, for the classes that keep their
state in Python (fusedopt.optim's and fusedopt.torch's Muon and Adafactor).

The step stores a pending Commit before its native call, and passes the
commit's mark to that call, which sets it after its last write, in the same
call: no exception comes between the two. Every look at the optimizer first
finishes a pending commit: it shows the step when the mark is set and drops it
when not (the call did not run, or refused before writing anything)."""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np


class Commit:
    """The writes of a step that show after its native call: ``mark`` is passed to
    that call, which sets it to 1 once it has written the parameters. ``apply``
    shows the rest (the new state, copied-back parameters); every line of it can
    run again with the same result."""

    def __init__(self, apply: Callable[[], None]) -> None:
        self.mark = np.zeros(1)
        self.apply = apply


class PendingCommit:
    # The step whose native call may have run but whose commit has not ended (None: none).
    _pending: Optional[Commit] = None

    def _finish(self) -> None:
        """Complete the pending commit (its call ran) or drop it (it did not)."""
        pending = self._pending
        if pending is None:
            return
        if pending.mark[0]:
            pending.apply()
        self._pending = None

    def _commit(self, pending: Commit, native: Callable[[np.ndarray], None]) -> None:
        """Run the native call that writes the parameters, then show the step.
        From the store of `pending` on, every look at the optimizer finds the
        step all done or not begun."""
        self._pending = pending
        try:
            native(pending.mark)
        except BaseException:
            if not pending.mark[0]:
                self._pending = None  # refused before writing anything
            raise
        self._finish()
