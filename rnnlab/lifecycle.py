"""How a command ends: the one place that decides a run's status, the signals that stop it, and the exit
codes of the commands.

    exit 0     the run finished (a sweep's failed trial too: it reports DIVERGED_LOSS and the sweep goes on)
    exit 2     a user mistake (``USER_ERRORS``): one line ``rnnlab: error: …``, nothing trained
    exit 3     the run failed (it diverged): the last good checkpoint is named
    128 + n    stopped by signal n (SIGINT 130, SIGTERM 143, SIGHUP 129) after a whole step, its
               checkpoint written; or at once by a second signal, the last complete checkpoint kept

``SignalStop`` is installed first thing, before any state exists (no tracked run, no checkpoint), so a
signal at any moment of a run's life ends it with a status. ``Supervisor.run(task)`` runs a task under
that policy: it maps how the task ended to a status (FINISHED, KILLED, FAILED) with its reason, ends the
tracked run with them, and turns the status into an exit code. ``last_end`` remembers the last status and
reason, for a sweep's parent run to close with (``tracking.sweep``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager

from .checkpoint import CheckpointError
from .config import ConfigError
from .data import DataError
from .train import Callback, TrainingDiverged

log = logging.getLogger("rnnlab")
USER_ERRORS = (ConfigError, DataError, CheckpointError)
EXIT_USER_ERROR, EXIT_FAILED = 2, 3
DIVERGED_LOSS = 1e6   # what a failed trial reports to a sweep: finite (a NaN would abort Optuna), and bad
last_end: dict = {}   # {"status": …, "reason": …} of the last command that ended in this process


def fail(message: str, code: int = EXIT_USER_ERROR):
    """Report a user mistake on stderr and exit, without a traceback."""
    last_end.update(status="FAILED", reason=message)
    print(f"rnnlab: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class StopRequested(Exception):
    """A signal asked the run to stop; ``step`` steps are done (None: stopped before training)."""

    def __init__(self, step: int | None, signal_number: int):
        self.step, self.signal = step, signal_number
        self.signal_name = signal.Signals(signal_number).name
        super().__init__(f"{self.signal_name} " + ("before training started" if step is None
                                                   else f"after step {step}"))


class StopNow(BaseException):  # not an Exception: `except Exception` must not catch it
    """A second signal: stop at once, wherever the run is (the last complete checkpoint is kept)."""

    def __init__(self, signal_number: int):
        self.signal = signal_number
        self.signal_name = signal.Signals(signal_number).name
        super().__init__(f"a second {self.signal_name}")


class SignalStop(Callback):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed) asks the run to stop at the end of the
    current step, where its state is whole and can be checkpointed; a second signal stops at once
    (``StopNow``); a third one is left to the system's default (the process ends).

    ``StopNow`` is raised only where it is safe to unwind: while the task runs (``interruptible``) and
    outside ``shield()`` — the calls into the tracking store and imports, which an exception raised in
    their middle can leave with a lock held. A second signal there is kept, and raised as soon as the
    shielded call returns (or, before training, heard at the next check)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received = None
        self.previous = {}
        self.interruptible = False
        self.shielded = 0
        self.pending = None          # a second signal kept until it is safe to stop

    @contextmanager
    def shield(self):
        """Run a block that a second signal must not interrupt; it stops right after it."""
        self.shielded += 1
        try:
            yield
        finally:
            self.shielded -= 1
            if not self.shielded and self.pending is not None and self.interruptible:
                raise StopNow(self.pending)

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread (e.g. not in a thread pool)
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self):
        """Put back the handlers found at ``install``; after a signal, the system's defaults instead: the
        command is ending, and a further signal ends the process at once, without a traceback."""
        for sig, handler in self.previous.items():
            signal.signal(sig, handler if self.received is None else signal.SIG_DFL)
        self.previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            for sig in self.SIGNALS:
                if sig in self.previous:
                    signal.signal(sig, signal.SIG_DFL)
            if self.interruptible and not self.shielded:
                raise StopNow(signum)
            self.pending = signum
            _announce(f"received {signal.Signals(signum).name} again: stopping as soon as the current call returns")
            return
        self.received = signum
        _announce(f"received {signal.Signals(signum).name}: stopping after this step (again to stop at once)")

    def check(self, step: int | None):
        """Raise ``StopNow`` for a kept second signal, ``StopRequested`` if a signal arrived (``step``: the
        steps done; None before training)."""
        if self.pending is not None:
            raise StopNow(self.pending)
        if self.received is not None:
            raise StopRequested(step, self.received)

    def on_start(self, step, history):
        self.check(None)

    def on_step(self, step, metrics):
        self.check(step + 1)


def _announce(message: str) -> None:
    """Tell the user, from inside a signal handler: one unbuffered write to standard error. Not through
    logging: a signal that arrives while a log handler flushes its stream re-enters that (non-reentrant)
    buffered stream, and logging then prints the error with a traceback."""
    try:
        os.write(2, f"rnnlab: {message}\n".encode())
    except OSError:
        pass


_early: SignalStop | None = None


def install_early() -> None:
    """Install the signal handlers first thing in a command (before Hydra composes anything); the run
    takes them over with ``take_early``: a signal in that window is heard, not a traceback."""
    global _early
    if _early is None:
        _early = SignalStop()
        _early.install()


def release_early() -> None:
    """Restore the handlers of ``install_early`` if no run took them (the command ended before one)."""
    global _early
    if _early is not None:
        _early.restore()
        _early = None


def take_early() -> SignalStop:
    """The handlers ``install_early`` installed (a new installed ``SignalStop`` if none)."""
    global _early
    stopper, _early = _early, None
    if stopper is None:
        stopper = SignalStop()
        stopper.install()
    return stopper


def stopped_before_start(stop) -> None:
    """End a command stopped by a signal before any run state existed (nothing tracked, nothing to save)."""
    reason = (f"stopped by {stop.signal_name} before training started" if isinstance(stop, StopRequested)
              else f"stopped at once by {stop}, before training started")
    last_end.update(status="KILLED", reason=reason)
    print(f"rnnlab: {reason}; nothing was trained or saved", file=sys.stderr, flush=True)
    raise SystemExit(128 + stop.signal)


class Supervisor:
    """Runs ``task(stopper)`` and owns how it ends: status and reason, the tracker's end, the checkpoint
    written on a stop, the exit code. ``stopper`` is the callback that turns a signal into a stop after
    a whole step (the task puts it last among the loop's callbacks); the caller installed it before
    building anything, and restores it."""

    def __init__(self, tracker=None, checkpointer=None, multirun: bool = False, stopper: SignalStop | None = None):
        self.tracker, self.checkpointer, self.multirun = tracker, checkpointer, multirun
        self.stopper = stopper or SignalStop()

    def run(self, task):
        """The task's result if it finished; None for a failed trial of a sweep; otherwise SystemExit."""
        own = not self.stopper.previous
        if own:
            self.stopper.install()
        try:
            status, reason, result, stop_signal = self._outcome(task)
        except BaseException as e:  # a crash: say why the run failed, then re-raise
            self._finish("FAILED", f"{type(e).__name__}: {e}")
            raise
        finally:
            if own:
                self.stopper.restore()
        self._finish(status, reason)
        return self._end(status, reason, result, stop_signal)

    def _outcome(self, task):
        """(status, reason, result, signal) of running the task."""
        try:
            try:
                self.stopper.interruptible = True
                try:
                    result = task(self.stopper)
                finally:
                    self.stopper.interruptible = False
                return "FINISHED", None, result, None
            except TrainingDiverged as e:
                latest = self.checkpointer.latest if self.checkpointer else None
                return "FAILED", f"{e}; the last good checkpoint is {latest or 'none (none was written)'}", None, None
            except OSError as e:  # a full disk, a file too large, a folder gone: writes are atomic
                where = f" {e.filename}" if e.filename else ""
                return "FAILED", (f"cannot write{where} ({e.strerror or e}); files are written whole or not at "
                                  f"all: {self._last_complete()}"), None, None
            except StopRequested as e:
                if e.step is None or not self.checkpointer:
                    return "KILLED", f"stopped by {e.signal_name} before training started; nothing to save", \
                        None, e.signal
                self.stopper.interruptible = True
                try:
                    path = self.checkpointer.save("last")
                    self.stopper.check(e.step)  # a second signal kept during a shielded call
                except StopRequested:
                    pass
                finally:
                    self.stopper.interruptible = False
                return "KILLED", f"stopped by {e.signal_name} after step {e.step}; checkpoint {path}", None, e.signal
        except StopNow as e:  # a second signal, during a step or while the first one's checkpoint is written
            return "KILLED", f"stopped at once by {e}; {self._last_complete()}", None, e.signal

    def _last_complete(self) -> str:
        """Where the last complete checkpoint of the run is (files are written whole or not at all)."""
        path = self.checkpointer.dir / "last.npz" if self.checkpointer else None
        if path is None or not path.is_file():
            return "no checkpoint was written by this run"
        if self.checkpointer.latest is None and self.checkpointer.step_done == 0:
            return f"the checkpoint {path} is intact"
        try:
            from .checkpoint import load
            step = load(path).step
        except CheckpointError:
            return f"no complete checkpoint at {path}"
        return f"the last complete checkpoint is {path} (step {step})"

    def _finish(self, status, reason):
        """End the tracked run; a further signal meanwhile ends it KILLED (a third one kills the process)."""
        last_end.update(status=status, reason=reason)
        if not self.tracker:
            return
        try:
            self.tracker.finish(status, reason)
        except StopNow as e:
            self.tracker.finish("KILLED", f"{reason or status}; stopped at once by {e} while closing the run")

    def _end(self, status, reason, result, stop_signal):
        if status == "KILLED":
            log.warning("%s", reason)
            resume = self.checkpointer.dir / "last.npz" if self.checkpointer else None
            if "stopped at once" in reason:
                print(f"rnnlab: {reason}" + (f"; resume with: python -m rnnlab resume={resume}"
                                             if resume and resume.is_file() else ""), file=sys.stderr, flush=True)
            elif resume and resume.is_file():
                print(f"rnnlab: {reason}\nresume with: python -m rnnlab resume={resume}  (its config comes along)",
                      file=sys.stderr, flush=True)
            else:
                print(f"rnnlab: {reason}", file=sys.stderr, flush=True)
            raise SystemExit(128 + stop_signal)
        if status == "FAILED":
            log.error("%s", reason)
            if self.multirun:
                log.error("this trial reports val_nll=%g to the sweep, which goes on", DIVERGED_LOSS)
                return None
            fail(reason, EXIT_FAILED)
        return result
