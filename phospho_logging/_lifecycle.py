"""The process around the engines: a registry, a control thread, one exit hook, one fork hook.

* A logging call never starts a thread and never takes a lock it could already hold (it
  may run in a signal handler, a finalizer, or at interpreter teardown). When it finds an
  engine's worker not running, or has something to report, it puts a request on a
  ``queue.SimpleQueue`` (reentrant by design) for the control thread, which starts the
  worker or prints the message.
* ``at_exit`` runs once, from ``atexit`` (registered after logging's own hook, so it runs
  first) or from multiprocessing's exit hook in its children: it drains every engine at
  once, each within its own ``shutdown_timeout``.
* One ``os.register_at_fork`` registration, made at import: before a fork the SQLite
  connections are closed; a child gets new task ids, locks, a control thread and empty
  engines (the parent's queued tasks stay the parent's to send).
* ``OWN_IO`` holds the threads that are inside the library's own I/O (an export, the
  spool, handlers a listener passes records on to): a task-carrying record made there is
  ignored (and counted), so a logger that catches our own traffic cannot loop. A record
  made by a finalizer (a ``__del__``, a ``weakref.finalize``) that the garbage collector
  runs meanwhile is not ours: it is shipped.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import gc
import itertools
import os
import queue
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any, Callable, Dict, Iterator, List, Optional

from . import _diag, _item, _store

#: Threads inside the library's own I/O, by ident (with the depth of nesting).
OWN_IO: Dict[int, int] = {}

_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_control: Optional[queue.SimpleQueue[Any]] = None
_control_lock = threading.RLock()  # control plane only, never taken by a logging call (reentrant: signal handlers)
_exit_hook = False
_before_exit: List[Callable[[], None]] = []
#: "running", then "exiting" while ``at_exit`` drains, then "exited".
state = "running"


def made_by_own_io(record: Any = None) -> bool:
    """True for a record made inside the library's own I/O, not by a finalizer the garbage
    collector happened to run there (a ``__del__``, a weakref callback, an abandoned
    generator's ``finally:``). Call it only when the thread is in ``OWN_IO`` (a rare path:
    it may look at the stack)."""
    return not (collecting() or in_finalizer())


#: The garbage collector's last phase, kept by a callback written in C (an ordered dict's
#: ``move_to_end``, called with ``(phase, info)``: ``info`` is true, so the phase moves to
#: the end). No Python code runs in it, so no signal handler can run there and have its
#: exception swallowed (a SIGTERM handler's ``sys.exit()`` lost).
_gc_phase: collections.OrderedDict[str, None] = collections.OrderedDict((("start", None), ("stop", None)))
gc.callbacks.append(_gc_phase.move_to_end)  # type: ignore[arg-type]  # info is a non-empty dict: true


def collecting() -> bool:
    """True while a garbage collection runs (its finalizers are not our own I/O)."""
    try:
        return next(reversed(_gc_phase)) == "start"
    except Exception:  # noqa: BLE001 - emptied at interpreter teardown
        return False


#: Frames looked at, at most, to tell a finalizer's record from our own I/O's.
_FINALIZER_DEPTH = 64


def in_finalizer() -> bool:
    """True when the calling code runs inside a ``__del__`` or a ``weakref.finalize``
    callback. (A ``gc.callbacks`` hook would say when a collection runs, but a signal
    handler's exception raised inside it would be swallowed: a SIGTERM handler's
    ``sys.exit()`` lost.)"""
    frame: Optional[FrameType] = sys._getframe(1)
    for _ in range(_FINALIZER_DEPTH):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_name == "__del__" or (code.co_name == "__call__" and code.co_filename == weakref.__file__):
            return True
        frame = frame.f_back
    return False


class own_io:
    """A context manager that marks this thread as doing the library's own I/O (nestable)."""

    __slots__ = ("_ident",)

    def __enter__(self) -> None:
        self._ident = ident = threading.get_ident()
        OWN_IO[ident] = OWN_IO.get(ident, 0) + 1

    def __exit__(self, *exc: object) -> None:
        ident = self._ident
        depth = OWN_IO.get(ident, 1) - 1
        if depth:
            OWN_IO[ident] = depth
        else:
            OWN_IO.pop(ident, None)


#: One lock per exporter object, whichever engines use it: ``export`` is called from one
#: thread at a time, as the Exporter protocol promises.
_exporter_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()


def exporting(exporter: Any) -> Callable[[float], Any]:
    """What ``Delivery`` enters around each export of ``exporter`` (given the request's
    timeout): the exporter's lock (``Busy`` if another engine holds it longer) and the
    own-I/O flag."""
    if getattr(exporter, "concurrent", False) is True:  # takes requests from several threads at once

        @contextlib.contextmanager
        def concurrently(timeout: float) -> Iterator[None]:
            with own_io():
                yield

        return concurrently
    with _control_lock:
        try:
            lock = _exporter_locks.get(exporter)
            if lock is None:
                lock = _exporter_locks[exporter] = threading.Lock()
        except TypeError:  # an exporter that cannot be weakly referenced: a lock of its own
            lock = threading.Lock()

    @contextlib.contextmanager
    def around(timeout: float) -> Iterator[None]:
        from ._delivery import Busy

        if not lock.acquire(timeout=max(0.0, timeout)):
            raise Busy(f"the exporter {exporter!r} stayed busy with another engine's batch for {timeout:g} s")
        try:
            with own_io():
                yield
        finally:
            lock.release()

    return around


def shared(exporter: Any, engine: Any) -> bool:
    """True if an engine other than ``engine`` uses ``exporter`` and has a worker running."""
    return any(other is not engine and other.exporter is exporter and other.running for other in list(_engines))


class ProcessLock:
    """A lock for control calls (``configure()``, captures) that a forked child gets
    anew: the parent's may have been held by another thread at the fork."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        _process_locks.add(self)

    def reset(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


_process_locks: weakref.WeakSet[ProcessLock] = weakref.WeakSet()


def register(engine: Any) -> None:
    """Track an engine for exit, fork and the module-level ``flush``/``stats``, and make
    sure the control thread runs (called when an engine is made, never by a logging call)."""
    _engines.add(engine)
    with _control_lock:
        _install_hooks()
        _start_control()
    if state != "running":
        engine.close_for_exit()  # made while exiting: nothing would drain it


def engines() -> List[Any]:
    """Every live engine of this process."""
    return list(_engines)


def spooled(path: Any, destination: str) -> None:
    """Tasks were just spooled: every engine on that spool replays it when idle."""
    for engine in list(_engines):
        spool = engine.spool
        if spool is not None and spool.path == path and spool.destination == destination:
            engine.settler.replay_due = True


def before_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at exit before the engines drain (open streams log their tasks)."""
    with _control_lock:
        _install_hooks()
        if callback not in _before_exit:
            _before_exit.append(callback)


def _install_hooks() -> None:
    """The exit hook and the collector's callback, once (call with ``_control_lock``)."""
    global _exit_hook
    if _exit_hook:
        return
    # After logging's own atexit hook (registered when logging was imported), so that ours
    # runs first: the queues drain before logging.shutdown() closes the handlers.
    atexit.register(at_exit)
    _register_multiprocessing_exit()
    _exit_hook = True


def _start_control() -> None:
    global _control
    if _control is not None:
        return
    requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
    thread = threading.Thread(target=_control_loop, args=(requests,), name="phospho-logging-control", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # interpreter shutdown: the exit path drains on its own thread
        return
    _control = requests


def _control_loop(requests: queue.SimpleQueue[Any]) -> None:
    while True:
        request = requests.get()
        try:
            if type(request) is tuple:
                _diag.warn_once(request[0], request[1], *request[2])
            elif type(request) is threading.Event:
                request.set()
            else:
                request.start()
        except Exception:  # noqa: BLE001, S110 - the control thread must outlive any request
            pass


def wake(engine: Any) -> None:
    """Ask the control thread to start ``engine``'s worker. Safe in any context."""
    requests = _control
    if requests is not None:
        requests.put(engine)


def quiesce(timeout: float) -> None:
    """Wait (at most ``timeout``) until the control thread has done what was asked of it
    so far: messages reported by logging calls are out when ``flush()`` returns. Not at
    exit: the control thread may never run again."""
    requests = _control
    if requests is not None and timeout > 0 and state == "running":
        done = threading.Event()
        requests.put(done)
        done.wait(timeout)


#: Tasks that reached no engine (a structlog processor with nothing configured).
_unshipped = itertools.count()


def unshipped(message: str) -> None:
    """A task reached nothing that ships it: counted (``stats()``, ``flush()``), said once."""
    next(_unshipped)
    report("not_configured", message)


def unshipped_count() -> int:
    """How many tasks reached no engine in this process."""
    return int(repr(_unshipped)[6:-1])


def report(key: str, message: str, *args: object) -> None:
    """``_diag.warn_once``, from the control thread. Safe in any context (a logging call
    must not write to stderr or take the diagnostics lock itself)."""
    requests = _control
    if requests is not None:
        requests.put((key, message, args))
    else:
        _diag.warn_once(key, message, *args)


# -- exit ---------------------------------------------------------------------------


def at_exit() -> None:
    """Drain every engine, each within its ``shutdown_timeout``; runs once."""
    global state
    if state != "running":
        return
    state = "exiting"
    started = time.monotonic()  # one deadline for everything exit does, listeners included
    try:
        for callback in list(_before_exit):
            try:
                callback()
            except Exception:  # noqa: BLE001, S110 - exit must go on
                pass
        drained = [engine for engine in list(_engines) if engine.needs_exit()]
        for engine in drained:
            _each(functools.partial(engine.begin_exit, started))
        for engine in drained:
            _each(engine.end_exit, engine.interrupt_exit)
        for engine in list(_engines):
            _each(engine.close_for_exit)
    finally:
        state = "exited"


def _each(step: Callable[[], None], interrupted: Optional[Callable[[], None]] = None) -> None:
    """One engine's step of the exit drain: whatever happens, the others still drain. If
    the step is interrupted (a Ctrl-C, a signal handler's ``sys.exit()``), ``interrupted``
    keeps what it can, quickly."""
    try:
        step()
    except BaseException as exc:  # noqa: BLE001 - even KeyboardInterrupt: exit goes on
        try:
            if interrupted is not None:
                interrupted()
        except BaseException:  # noqa: BLE001, S110 - interrupted again: exit goes on
            pass
        try:
            _diag.warn_once("exit_error", "the exit drain of an engine was interrupted: %r", exc)
        except Exception:  # noqa: BLE001, S110
            pass


class _MultiprocessingHook:
    """multiprocessing's children end with os._exit(), which skips atexit. Its own exit
    hook runs its finalizers, but it clears them when a child starts, so ours is added
    from its after-fork registry, which runs after that."""

    def __call__(self, _: object) -> None:
        import multiprocessing.util as util

        util.Finalize(None, at_exit, exitpriority=100)


_multiprocessing_hook = _MultiprocessingHook()


def _register_multiprocessing_exit() -> None:
    if not hasattr(os, "fork"):
        return
    import multiprocessing
    import multiprocessing.util as util

    util.register_after_fork(_multiprocessing_hook, _multiprocessing_hook)
    if multiprocessing.parent_process() is not None:
        # Already a multiprocessing child (its first engine made after it started): its
        # own exit hook must run ours too.
        _multiprocessing_hook(None)


# -- fork ---------------------------------------------------------------------------


def _before_fork() -> None:
    _store.before_fork()


def _after_fork_in_parent() -> None:
    _store.after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _control, _control_lock
    _store.after_fork_in_child()
    _item.reseed()
    _diag.reset_after_fork()
    OWN_IO.clear()
    _exporter_locks.clear()  # a lock held by a parent's thread would stay held here
    _gc_phase.move_to_end("stop")  # forked from a finalizer: no collection runs in the child
    for lock in list(_process_locks):
        lock.reset()
    _control = None
    _control_lock = threading.RLock()
    found = list(_engines)
    for engine in found:
        try:
            engine.reset_after_fork()
        except Exception as exc:  # noqa: BLE001 - a child must come up whatever happens
            _diag.warn_once("fork", "could not reset %r after fork: %r", engine, exc)
    if found:
        _start_control()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
