"""How a command ends: the one place that decides a run's status, the signals that stop it, and the exit
codes of the commands.

    exit 0     the run finished (a sweep's failed trial too: it reports DIVERGED_LOSS and the sweep goes on)
    exit 2     a user mistake (``USER_ERRORS``): one line ``rnnlab: error: …``, nothing trained
    exit 3     the run failed (it diverged): the last good checkpoint is named
    128 + n    stopped by signal n (SIGINT 130, SIGTERM 143) after a whole step, its checkpoint written

``Supervisor.run(task)`` runs a task under that policy: it installs the signal handlers, maps how the
task ended to a status (FINISHED, KILLED, FAILED) with its reason, ends the tracked run with them, and
turns the status into an exit code.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .train import Callback, TrainingDiverged

log = logging.getLogger("rnnlab")
USER_ERRORS = (ConfigError, DataError, CheckpointError)
EXIT_USER_ERROR, EXIT_FAILED = 2, 3
DIVERGED_LOSS = 1e6   # what a failed trial reports to a sweep: finite (a NaN would abort Optuna), and bad


def fail(message: str, code: int = EXIT_USER_ERROR):
    """Report a user mistake on stderr and exit, without a traceback."""
    print(f"rnnlab: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class StopRequested(Exception):
    def __init__(self, step: int, signal_number: int):
        self.step, self.signal = step, signal_number
        self.signal_name = signal.Signals(signal_number).name
        super().__init__(f"{self.signal_name} after step {step}")


class SignalStop(Callback):
    """Ctrl-C (SIGINT) or SIGTERM asks the run to stop at the end of the current step, where its
    state is whole and can be checkpointed; a second signal stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.previous = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in a thread pool)
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            self.restore()
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: stopping after this step (again to stop at once)",
                    signal.Signals(signum).name)

    def on_step(self, step, metrics):
        if self.received is not None:
            raise StopRequested(step + 1, self.received)


class Supervisor:
    """Runs ``task(stopper)`` and owns how it ends: status and reason, the tracker's end, the checkpoint
    written on a stop, the exit code. ``stopper`` is the callback that turns a signal into a stop after
    a whole step (the task puts it last among the loop's callbacks)."""

    def __init__(self, tracker=None, checkpointer=None, multirun: bool = False):
        self.tracker, self.checkpointer, self.multirun = tracker, checkpointer, multirun

    def run(self, task):
        """The task's result if it finished; None for a failed trial of a sweep; otherwise SystemExit."""
        stopper = SignalStop()
        status, reason, result, stop_signal = "FAILED", None, None, None
        stopper.install()
        try:
            result = task(stopper)
            status = "FINISHED"
        except TrainingDiverged as e:
            latest = self.checkpointer.latest if self.checkpointer else None
            reason = f"{e}; the last good checkpoint is {latest or 'none (none was written)'}"
        except StopRequested as e:
            status, stop_signal = "KILLED", e.signal
            path = self.checkpointer.save("last") if self.checkpointer else None
            reason = f"stopped by {e.signal_name} after step {e.step}; checkpoint {path}"
        except BaseException as e:  # a crash or a second Ctrl-C: say why the run failed, then re-raise
            reason = f"{type(e).__name__}: {e}"
            raise
        finally:
            stopper.restore()
            if self.tracker:
                self.tracker.finish(status, reason)
        return self._end(status, reason, result, stop_signal)

    def _end(self, status, reason, result, stop_signal):
        if status == "KILLED":
            log.warning("%s", reason)
            resume = self.checkpointer.dir / "last.npz" if self.checkpointer else "<checkpoint>"
            print(f"rnnlab: {reason}\nresume with: python -m rnnlab resume={resume} <the same overrides>",
                  file=sys.stderr, flush=True)
            raise SystemExit(128 + stop_signal)
        if status == "FAILED":
            log.error("%s", reason)
            if self.multirun:
                log.error("this trial reports val_nll=%g to the sweep, which goes on", DIVERGED_LOSS)
                return None
            fail(reason, EXIT_FAILED)
        return result
