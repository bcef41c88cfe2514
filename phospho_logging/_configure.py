"""``configure()``: an engine behind a queue handler on a logger, and the module-level
``flush``, ``shutdown`` and ``stats``.

Calling ``configure()`` again on the same logger hands the handler over to the new engine
in one attribute swap: a record logged meanwhile reaches the old engine or the new one,
never neither; the old one delivers what it had and ends.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional, Union

from . import _diag, _lifecycle
from ._config import Options, resolve
from ._engine import Engine, wait_limit
from ._handlers import notice_start
from ._queue_pair import PhosphoQueueHandler

_lock = _lifecycle.ProcessLock()  # configure() and shutdown() only, never a logging call
#: The pipeline of the last ``configure()``, and its engine (read directly on the structlog
#: hot path).
installed: Optional[Pipeline] = None
installed_engine: Optional[Engine] = None


class Pipeline:
    """The handle ``configure()`` returns: a queue handler on a logger and its engine."""

    def __init__(self, logger: logging.Logger, handler: PhosphoQueueHandler, engine: Engine) -> None:
        self.logger = logger
        self.handler = handler
        self.engine = engine
        self.options: Options = engine.options

    def __repr__(self) -> str:
        return f"<phospho_logging pipeline on {self.logger.name!r} -> {self.engine.destination}>"

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every task logged before the call is delivered; True if all were.

        ``None`` waits as long as the retry budget allows. False means a timeout, or tasks
        dropped or rejected since the last flush (``stats()`` says which).
        """
        return self.engine.flush(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Detach from the logger, deliver what is queued within ``timeout`` (default
        ``shutdown_timeout``), and stop the worker. Tasks logged afterwards on the logger
        are not shipped (``configure()`` again to resume)."""
        global installed, installed_engine
        with _lock:
            if installed is self:
                installed = installed_engine = None
        if self.handler.engine is self.engine:
            self.logger.removeHandler(self.handler)
        self.engine.shutdown(timeout)

    def stats(self) -> Dict[str, Any]:
        """Counters: ``enqueued == sent + rejected + dropped + queued + spooled``."""
        return self.engine.stats()

    def submit(self, item: Any) -> None:
        """Submit a task snapshotted elsewhere (the structlog processor). Never blocks."""
        self.engine.submit(item)


def configure(
    api_key: Optional[str] = None,
    project_id: Optional[str] = None,
    base_url: Optional[str] = None,
    logger: Union[str, logging.Logger] = "phospho",
    local_dir: Optional[str] = None,
    exporter: Any = None,
    **options: Any,
) -> Pipeline:
    """Ship task-carrying records of ``logger`` to phospho, or to the local store offline.

    Unset values come from ``PHOSPHO_API_KEY``, ``PHOSPHO_PROJECT_ID``,
    ``PHOSPHO_BASE_URL``, ``PHOSPHO_LOCAL_DIR`` and the other ``PHOSPHO_*`` variables.
    Calling it again replaces the previous pipeline: on the same logger the handler is
    handed to the new engine without a gap; the old engine delivers what it had queued in
    the background, so no task is sent twice or lost.

    Args:
        api_key: the phospho API key.
        project_id: the phospho project id.
        base_url: the API root (default ``https://api.phospho.ai``).
        logger: a logger name, a ``Logger``, or ``""`` for the root logger.
        local_dir: where the local store lives when there are no credentials.
        exporter: where batches go instead (any ``phospho_logging.Exporter``, such as
            ``phospho_logging.testing.InMemoryExporter``).
        **options: ``max_batch_size``, ``max_batch_bytes``, ``flush_interval``,
            ``max_queue_size``, ``timeout``, ``shutdown_timeout``, ``max_attempts``,
            ``max_field_chars``, ``version_id``, ``input_to_str``, ``output_to_str``,
            ``allow_insecure_http``, ``durable``, ``max_spool_tasks``, ``max_retry_time``.

    Returns:
        The pipeline handle, with ``flush``, ``shutdown`` and ``stats``.
    """
    global installed, installed_engine
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or None)
    resolved = resolve(dict(options, api_key=api_key, project_id=project_id, base_url=base_url, local_dir=local_dir))
    engine = Engine(resolved, exporter)
    with _lock:
        previous = installed
        if previous is not None and previous.logger is target and previous.handler in target.handlers:
            handler = previous.handler
            handler.bind(engine)  # the handover: one attribute swap
        else:
            handler = PhosphoQueueHandler()
            handler.bind(engine)
            target.addHandler(handler)
            if previous is not None:
                previous.logger.removeHandler(previous.handler)
        installed = pipeline = Pipeline(target, handler, engine)
        installed_engine = engine
    if previous is not None:
        previous.engine.shutdown(wait=False)
    if target.level == logging.NOTSET and target is not logging.getLogger():
        # A named logger inherits the root's WARNING by default, which would drop info().
        target.setLevel(logging.INFO)
    _warn_if_level_hides_info(target)
    notice_start(engine)
    engine.begin()
    return pipeline


def _warn_if_level_hides_info(target: logging.Logger) -> None:
    if not target.isEnabledFor(logging.INFO):
        name = target.name if target is not logging.getLogger() else "root"
        _diag.warn_once(
            "level_hides_info:" + name,
            "the %s logger's level is %s, so info() tasks on it are ignored; set it to INFO "
            "(logging.getLogger(%r).setLevel(logging.INFO)) to ship them",
            name,
            logging.getLevelName(target.getEffectiveLevel()),
            "" if name == "root" else name,
        )


def current() -> Optional[Pipeline]:
    """The pipeline of the last ``configure()`` call, if any."""
    return installed


def default_engine() -> Optional[Engine]:
    """Where a task made outside a logger (the structlog processor) goes: the engine of
    ``configure()``, else the newest engine still open (a dictConfig handler's)."""
    pipeline = installed
    if pipeline is not None:
        return pipeline.engine
    open_engines = [e for e in _lifecycle.engines() if not e.stopped]
    return max(open_engines, key=lambda e: e.serial) if open_engines else None


def flush(timeout: Optional[float] = None) -> bool:
    """Flush every engine of the process (that of ``configure()``, those of handlers
    dictConfig made, those still finishing after a reconfiguration); True when all of
    them delivered everything."""
    global _unshipped_seen
    unshipped = _lifecycle.unshipped_count()
    ok = unshipped == _unshipped_seen  # tasks that reached no engine since the last flush
    _unshipped_seen = unshipped
    engines = [e for e in _lifecycle.engines() if e.needs_exit()]
    if not engines:
        _lifecycle.quiesce(min(1.0, wait_limit(timeout, 1.0)))  # messages of logging calls
        return ok
    budget = wait_limit(timeout, max(e.retry_budget() for e in engines))
    deadline = time.monotonic() + budget
    for engine in sorted(engines, key=lambda e: e.serial):
        ok = engine.flush(max(0.0, deadline - time.monotonic())) and ok
    return ok


_unshipped_seen = 0


def shutdown(timeout: Optional[float] = None) -> None:
    """Detach the configured pipeline, then deliver what every engine of the process
    holds (``configure()``'s and the handlers' of a dictConfig) within ``timeout`` (default:
    each engine's ``shutdown_timeout``), all at once, and stop them.

    Call it before ``os._exit()`` (which skips every exit hook); at a normal exit the same
    happens by itself.
    """
    global installed, installed_engine
    with _lock:
        pipeline, installed, installed_engine = installed, None, None
    if pipeline is not None and pipeline.handler.engine is pipeline.engine:
        pipeline.logger.removeHandler(pipeline.handler)
    engines = [e for e in _lifecycle.engines() if e.needs_exit()]
    for engine in engines:
        engine.shutdown(timeout, wait=False)
    for engine in engines:
        engine.shutdown(timeout)


def stats() -> Dict[str, Any]:
    """Counters of the configured pipeline; without ``configure()``, those of the engines
    still open (the handlers dictConfig made), added up. Empty if there are none."""
    pipeline = installed
    if pipeline is not None:
        return _with_unshipped(pipeline.stats())
    parts = [e.stats() for e in sorted(_lifecycle.engines(), key=lambda e: e.serial) if not e.stopped]
    parts = [p for p in parts if p["enqueued"] or p["replayed"]] or parts[:1]
    if len(parts) <= 1:
        return _with_unshipped(parts[0] if parts else {})
    return _with_unshipped(_add_up(parts))


def _with_unshipped(stats: Dict[str, Any]) -> Dict[str, Any]:
    """Add the tasks that reached no engine (``not_configured``), if there were any."""
    n = _lifecycle.unshipped_count()
    if not n:
        return stats
    if not stats:
        stats = {"enqueued": 0, "sent": 0, "rejected": 0, "dropped": 0, "queued": 0, "spooled": 0,
                 "dropped_by_reason": {}}
    stats["enqueued"] += n
    stats["dropped"] += n
    stats["dropped_by_reason"]["not_configured"] = n
    return stats


def _add_up(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    total: Dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, bool) or not isinstance(value, (int, dict)):
                total.setdefault(key, value)
            elif isinstance(value, dict):
                into = total.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            else:
                total[key] = total.get(key, 0) + value
    return total
