"""Process lifecycle: draining every worker at exit, and resetting them in a forked child.

``stop_all`` runs from ``atexit`` (registered after logging's own hook, so it runs first:
the queues drain before ``logging.shutdown()`` flushes and closes the handlers), and from
multiprocessing's exit hook in its children, which end with ``os._exit()``. After
``os.fork`` the child forgets the parent's threads, workers and locks; handlers give it
new queues through ``on_fork`` callbacks.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Any, Callable, List, Optional

from . import _diag

#: Identities of the worker threads: a record created on one of them (urllib3's debug
#: lines about our own requests, say) is never turned into a task.
WORKER_THREADS: set[int] = set()

_live_workers: weakref.WeakSet[Any] = weakref.WeakSet()
_all_workers: weakref.WeakSet[Any] = weakref.WeakSet()
_hooks_registered = False
_hooks_lock = threading.Lock()
_foreign_listeners: weakref.WeakSet[Any] = weakref.WeakSet()
_fork_callbacks: List[Callable[[], None]] = []


def stop_at_exit(listener: Any) -> None:
    """Have a stdlib ``QueueListener`` we started stopped (so drained) at exit."""
    _foreign_listeners.add(listener)
    register_process_hooks()


def on_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in a forked child, after the workers are reset (once per callback)."""
    if callback not in _fork_callbacks:
        _fork_callbacks.append(callback)
    register_process_hooks()


def register_process_hooks() -> None:
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        # Registered after logging's own hook, so it runs first: the queues drain before
        # logging.shutdown() flushes and closes the handlers.
        atexit.register(stop_all)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _register_multiprocessing_exit()
        _hooks_registered = True


_before_exit: List[Callable[[], None]] = []


def before_exit(callback: Callable[[], None]) -> None:
    """Run ``callback`` at exit before the workers drain (streams log their last tasks)."""
    if callback not in _before_exit:
        _before_exit.append(callback)


def stop_all(timeout: Optional[float] = None) -> None:
    """Stop every live worker at once, each within its own ``shutdown_timeout``.

    ``before_exit`` callbacks run first, then stdlib listeners we started: stopping one
    drains its queue into the ``PhosphoHandler`` behind it, whose worker is then stopped
    with the others.
    """
    for callback in list(_before_exit):
        try:
            callback()
        except Exception:  # noqa: BLE001 - exit must go on
            pass
    for listener in list(_foreign_listeners):
        if getattr(listener, "_thread", None) is not None:
            try:
                listener.stop()
            except Exception:  # noqa: BLE001 - exit must go on
                pass
    workers = [w for w in list(_live_workers) if w.alive]
    for worker in workers:
        worker.stop(timeout, wait=False)
    for worker in workers:
        worker.join()
    for worker in list(_all_workers):
        # Never got a thread (tasks arrived as exit began): drain on this thread.
        if worker._thread is None and worker.queued():
            worker.drain_here(timeout)


def _after_fork_in_child() -> None:
    """A forked child gets its own queues, locks, connections and (lazily) threads; the
    parent's queued tasks stay the parent's to send."""
    global _hooks_lock
    WORKER_THREADS.clear()
    # The parent's workers (and what their queues hold) stay the parent's: handlers give
    # the child new ones (fork callbacks below), which register themselves again. The
    # sets are emptied in place: other modules hold references to them.
    _all_workers.clear()
    _hooks_lock = threading.Lock()
    _diag.reinit_after_fork()
    workers = list(_live_workers)
    _live_workers.clear()
    for worker in workers:
        worker.reinit_after_fork()
    for callback in _fork_callbacks:
        try:
            callback()
        except Exception:  # noqa: BLE001
            pass


class _MultiprocessingHook:
    """multiprocessing's children end with os._exit(), which skips atexit. Its own exit
    hook runs its finalizers, but it clears them when a child starts, so ours is added
    from its after-fork registry, which runs after that."""

    def __call__(self, _: object) -> None:
        import multiprocessing.util as util

        util.Finalize(None, stop_all, exitpriority=100)


_multiprocessing_hook = _MultiprocessingHook()


def _register_multiprocessing_exit() -> None:
    import multiprocessing.util as util

    util.register_after_fork(_multiprocessing_hook, _multiprocessing_hook)
