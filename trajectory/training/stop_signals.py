"""SIGTERM and Ctrl-C ask a training loop to stop at its next step boundary, save, and leave.

Schedulers and torchrun stop a job with SIGTERM, users with Ctrl-C (SIGINT); both get the same
save. Raising inside the handler could interrupt an optimizer step half-way and save that, so the
handler only sets a flag the loop reads after each step. A second Ctrl-C stops at once (Python's
KeyboardInterrupt) without saving: the last checkpoint stays as it was.
"""
from __future__ import annotations

import signal


class StopSignals:
    """``with StopSignals() as stop:`` ... ``if stop.received: save and break``. The handlers it
    replaced come back when the block ends: after training, in the same process (``make demo``
    evaluates next), SIGTERM and Ctrl-C must stop the process again."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None  # the first signal's name
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum).name
        if signum == signal.SIGINT:  # the next Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def stopped_note(received: str | None, step: int, saved_in: str, resume: str) -> str:
    """The line a run stopped by a signal ends with: where it saved, and how to go on."""
    how = {"SIGINT": "Ctrl-C", None: "a signal"}.get(received, received)
    return f"stopped by {how} at step {step:,}: saved in {saved_in}; continue with {resume}"
