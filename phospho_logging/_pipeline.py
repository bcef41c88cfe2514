"""``configure()``: one asynchronous pipeline attached to a logger, and its handle."""

from __future__ import annotations

import logging
import queue as queue_module
import threading
from typing import Any, Dict, Optional, Union

from . import _capture, _diag
from ._handlers import PhosphoHandler
from ._pending import Pending
from ._queue_pair import PhosphoQueueHandler, PhosphoQueueListener, configured_handlers

_lock = threading.Lock()
_current: Optional[Pipeline] = None


class Pipeline:
    """The handle ``configure()`` returns: a queue handler on a logger, a listener thread
    that batches and sends, and the sending handler with the options."""

    def __init__(self, logger: logging.Logger, options: Dict[str, Any]) -> None:
        self.logger = logger
        self.sender = PhosphoHandler(**options)
        self.options = self.sender.options
        q: queue_module.SimpleQueue[Any] = queue_module.SimpleQueue()
        self.listener = PhosphoQueueListener(q, self.sender)
        self.handler = PhosphoQueueHandler(q)
        self.handler.listener = self.listener

    def __repr__(self) -> str:
        return f"<phospho_logging pipeline on {self.logger.name!r} -> {self.sender.exporter.destination}>"

    def start(self) -> None:
        """Start the listener thread and attach the queue handler to the logger."""
        self.listener.start()
        self.logger.addHandler(self.handler)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every task logged before the call is delivered; True if all were.

        ``None`` waits as long as the retry budget allows. False means a timeout, or tasks
        dropped or rejected since the last flush (``stats()`` says which).
        """
        return self.listener.flush(timeout)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Detach from the logger, deliver what is queued within ``timeout`` (default
        ``shutdown_timeout``), and stop the worker. Later tasks on the logger are ignored."""
        self.logger.removeHandler(self.handler)
        self.listener.stop(timeout)

    def stats(self) -> Dict[str, Any]:
        """Counters: ``enqueued == sent + rejected + dropped + queued + spooled``."""
        return self.listener.stats()

    def submit(self, pending: Pending) -> None:
        """Enqueue a task snapshotted elsewhere (the structlog processor). Never blocks."""
        if _capture.active:
            _capture.deliver(pending, self.options)
            return
        self.handler.submit(pending)


def configure(
    api_key: Optional[str] = None,
    project_id: Optional[str] = None,
    base_url: Optional[str] = None,
    logger: Union[str, logging.Logger] = "phospho",
    local_dir: Optional[str] = None,
    **options: Any,
) -> Pipeline:
    """Ship task-carrying records of ``logger`` to phospho, or to the local store offline.

    Unset values come from ``PHOSPHO_API_KEY``, ``PHOSPHO_PROJECT_ID``,
    ``PHOSPHO_BASE_URL``, ``PHOSPHO_LOCAL_DIR`` and the other ``PHOSPHO_*`` variables.
    Calling it again replaces the previous pipeline: that one is detached at once and
    delivers what it had queued in the background, so no task is sent twice or lost.

    Args:
        api_key: the phospho API key.
        project_id: the phospho project id.
        base_url: the API root (default ``https://api.phospho.ai``).
        logger: a logger name, a ``Logger``, or ``""`` for the root logger.
        local_dir: where the local store lives when there are no credentials.
        **options: ``max_batch_size``, ``max_batch_bytes``, ``flush_interval``,
            ``max_queue_size``, ``timeout``, ``shutdown_timeout``, ``max_attempts``,
            ``max_field_chars``, ``version_id``, ``input_to_str``, ``output_to_str``,
            ``allow_insecure_http``.

    Returns:
        The pipeline handle, with ``flush``, ``shutdown`` and ``stats``.
    """
    global _current
    target = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger or None)
    all_options = dict(options, api_key=api_key, project_id=project_id, base_url=base_url, local_dir=local_dir)
    pipeline = Pipeline(target, all_options)
    with _lock:
        previous, _current = _current, pipeline
    if previous is not None:
        previous.logger.removeHandler(previous.handler)
        previous.listener.worker.stop(wait=False)
    if target.level == logging.NOTSET and target is not logging.getLogger():
        # A named logger inherits the root's WARNING by default, which would drop info().
        target.setLevel(logging.INFO)
    _warn_if_level_hides_info(target)
    pipeline.start()
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
    return _current


def flush(timeout: Optional[float] = None) -> bool:
    """Flush the configured pipeline, and the phospho_logging handlers that dictConfig
    made; True when all of them delivered everything."""
    pipeline = _current
    ok = True if pipeline is None else pipeline.flush(timeout)
    for handler in configured_handlers():
        if pipeline is not None and handler in (pipeline.handler, pipeline.sender):
            continue
        if isinstance(handler, PhosphoHandler) and not handler.worker.alive and not handler.worker.queued():
            continue  # behind a listener, or never used: nothing of its own to flush
        ok = handler.flush(timeout) and ok
    return ok


def shutdown(timeout: Optional[float] = None) -> None:
    """Shut the configured pipeline down (see ``Pipeline.shutdown``)."""
    global _current
    with _lock:
        pipeline, _current = _current, None
    if pipeline is not None:
        pipeline.shutdown(timeout)


def stats() -> Dict[str, Any]:
    """Counters of the configured pipeline; without ``configure()``, those of the
    phospho_logging handlers that dictConfig made, added up. Empty if there are none."""
    pipeline = _current
    if pipeline is not None:
        return pipeline.stats()
    handlers = configured_handlers()
    parts = [h.stats() for h in handlers if isinstance(h, PhosphoQueueHandler)]
    # A PhosphoHandler behind a queue handler is counted through it; alone, by itself.
    behind = {id(x) for h in handlers if isinstance(h, PhosphoQueueHandler) for x in _senders(h)}
    parts += [h.stats() for h in handlers if isinstance(h, PhosphoHandler) and id(h) not in behind]
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return parts[0] if parts else {}
    return _add_up(parts)


def configured_sender() -> Optional[PhosphoHandler]:
    """The PhosphoHandler a dictConfig made (directly, or behind a queue handler), if any."""
    for handler in configured_handlers():
        if isinstance(handler, PhosphoHandler):
            return handler
        senders = _senders(handler)
        if senders:
            return senders[0]  # type: ignore[no-any-return]
    return None


def _senders(handler: PhosphoQueueHandler) -> list[Any]:
    listener = handler.listener
    if isinstance(listener, PhosphoQueueListener):
        return [listener.sender]
    return [h for h in getattr(listener, "handlers", ()) if isinstance(h, PhosphoHandler)]


def _add_up(parts: list[Dict[str, Any]]) -> Dict[str, Any]:
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
