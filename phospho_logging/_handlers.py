"""``PhosphoHandler``, and the intake every handler of ours shares.

``TaskIntake`` is the logging side of an engine: it picks task-carrying records out of
everything a logger handles, snapshots them on the caller's thread and submits them to
its engine, without the handler lock, without I/O, without raising. Which path a record
takes (the short one for the commonest record, the general one otherwise) is decided
when the handler is bound or its filters change, not per call. ``PhosphoHandler`` is a
handler with an engine of its own; the queue pair is in ``_queue_pair``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional

from . import _context, _diag, _lifecycle
from ._config import Options, TextFunction, resolve
from ._engine import Engine
from ._feedback import feedback_of
from ._item import STANDARD_ATTRS, Snapshot, carried, plain_record
from ._lifecycle import OWN_IO, made_by_own_io
from ._snapshot import snapshot_record
from ._store import LocalStoreExporter, refusal, unwritable

_context_get = _context.current


class Route(NamedTuple):
    """Where a handler's tasks go, swapped as one value (so a record logged while a
    handler is rebound sees the old route or the new one, never a mix).

    Attributes:
        engine: the engine tasks are submitted to; None for a queue handler whose
            listener is not ours (it puts record copies on its queue).
        input_to_str, output_to_str: text functions run on the caller's thread.
        short: the short path applies (an engine, no filter, no text function, bare
            snapshots wanted).
        records: the engine passes records on to other handlers: submit record copies.
    """

    engine: Optional[Engine]
    input_to_str: Optional[TextFunction]
    output_to_str: Optional[TextFunction]
    short: bool
    records: bool


_noticed: set[str] = set()


def notice_start(engine: Engine) -> None:
    """Say once per destination, on stderr, where tasks go when that needs saying: offline,
    the local store and how to see it (or that its directory cannot be written); online,
    only a spool directory that cannot be written."""
    if engine.options.sample_rate == 0.0 and "sample_rate=0" not in _noticed:
        _noticed.add("sample_rate=0")
        try:
            sys.stderr.write("phospho-logging: sample_rate is 0: no task is sent or kept (each is counted in "
                             "stats()['sampled_out']); set it between 0 and 1 to keep that share of sessions.\n")
        except Exception:  # noqa: BLE001 - a closed stderr must not break the app
            pass
    if engine.destination in _noticed:
        return
    _noticed.add(engine.destination)
    if isinstance(engine.exporter, LocalStoreExporter):
        text = _offline_text(engine, engine.exporter.path)
    else:
        spool = engine.settler.spool
        why = None if spool is None else unwritable(spool.path.parent) or refusal(spool.path)
        if spool is None or why is None:
            return
        # Said here, once: the failed spool writes that follow are counted without more
        # lines (the exit report gives the tally).
        _diag.quiet("dropped:spool_error")
        _diag.quiet("spool_error")
        text = (f"phospho-logging: the local directory {spool.path.parent} cannot be written ({why}): tasks that "
                "cannot be delivered (phospho unreachable, a wrong key) cannot be kept in the spool and are lost, "
                "counted in stats()['dropped'].\nphospho-logging: set PHOSPHO_LOCAL_DIR (or local_dir=) to a "
                "writable directory.\n")
    try:
        sys.stderr.write(text)
    except Exception:  # noqa: BLE001 - a closed stderr must not break the app
        pass


def _offline_text(engine: Engine, path: Path) -> str:
    directory = path.parent
    why = unwritable(directory) or refusal(path)
    if why is None:
        return (f"phospho-logging: no PHOSPHO_API_KEY/PHOSPHO_PROJECT_ID set, so tasks are kept in the "
                f"{engine.destination}.\nphospho-logging: see them with `phospho-logging tail`; "
                "set both variables to send them to phospho.\n")
    # Said here, once: the failed writes that follow are counted without another line
    # (the exit report gives the tally).
    _diag.quiet("dropped:local_store_error")
    return (f"phospho-logging: no PHOSPHO_API_KEY/PHOSPHO_PROJECT_ID set, so tasks go to the local store, "
            f"but it cannot be written in {directory} ({why}): the tasks logged are lost, counted in "
            "stats()['dropped_by_reason']['local_store_error'].\nphospho-logging: set PHOSPHO_LOCAL_DIR (or "
            "local_dir=) to a writable directory, or set PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID to send them "
            "to phospho.\n")


#: Loggers already told that a record with an output but no input is not a task.
_no_input_said: set[str] = set()
#: Past this many loggers, no more such notices (logger names made per request).
NO_INPUT_NOTICES = 100


def notice_no_input(record: logging.LogRecord) -> None:
    """Say once per logger that a record carrying task fields without an ``input`` is not
    a task (from the control thread: safe in a signal handler)."""
    name = record.name if type(record.name) is str else repr(record.name)
    if name in _no_input_said or len(_no_input_said) >= NO_INPUT_NOTICES:
        return
    _no_input_said.add(name)
    _lifecycle.report("no_input:" + name, "logger %r logged a record with an 'output' or a 'session_id' but no "
                      "'input': it is not a task and is not shipped (add extra={'input': ...}); said once per "
                      "logger", name)


def bound_by_loguru(record: logging.LogRecord) -> bool:
    """A record loguru made for a handler sink (``logger.add(PhosphoHandler())``): the fields
    bound with ``logger.bind(input=..., output=...)`` are in its ``extra`` dict. They are
    moved onto the record, as ``extra=`` puts them (loguru makes one record per sink, so
    nobody else sees the change). True when that made it a task or a feedback."""
    bound = record.__dict__.get("extra")
    if type(bound) is not dict or not ("input" in bound or ("flag" in bound and "task_id" in bound)):
        return False
    attrs = record.__dict__
    del attrs["extra"]
    clashing = {}
    for key, value in bound.items():
        if type(key) is str and key not in STANDARD_ATTRS and key not in attrs:
            attrs[key] = value
        else:  # a LogRecord's own name (name, message, levelname...): into the metadata, as log() does
            clashing[str(key)] = value
    if clashing:
        given = attrs.get("metadata")
        attrs["metadata"] = {**clashing, **given} if isinstance(given, dict) else {**clashing, "metadata": given} \
            if given is not None else clashing
    return True


def apply_filters(handler: logging.Handler, record: logging.LogRecord) -> Optional[logging.LogRecord]:
    """The record to handle after the handler's filters (which may replace it), or None."""
    if not handler.filters:
        return record
    rv = handler.filter(record)
    if not rv:
        return None
    return rv if isinstance(rv, logging.LogRecord) else record


def report_error(exc: BaseException, engine: Optional[Engine] = None) -> None:
    """A record could not be handled: a task lost is counted on ``engine`` (said once,
    from the control thread)."""
    if engine is not None:
        engine.intake_failed(exc)
    else:
        _lifecycle.report("emit_error", "a record could not be handled: %r", exc)


class TaskIntake:
    """The ``handle`` of our handlers: task-carrying records -> snapshots -> the engine.

    Subclasses set their route with ``_bind_route`` and may override ``_deliver``.
    """

    _route: Route
    _short_engine: Optional[Engine]
    filters: Any

    def _bind_route(
        self,
        engine: Optional[Engine],
        input_to_str: Optional[TextFunction] = None,
        output_to_str: Optional[TextFunction] = None,
        records: bool = False,
    ) -> None:
        """Point the handler at ``engine`` (one attribute swap), choosing its path now."""
        short = (
            engine is not None and engine.plain and not records and input_to_str is None
            and output_to_str is None and not self.filters
        )
        self._route = Route(engine, input_to_str, output_to_str, short, records)
        # The short path reads this alone: a record sees the old engine or the new one.
        self._short_engine = engine if short else None

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        """Snapshot a task-carrying record and submit it; ignore the others (one dict
        lookup). No handler lock: nothing here waits, and the queue is thread-safe."""
        attrs = record.__dict__
        if "input" not in attrs:
            if type(record.msg) is dict and "input" in record.msg:
                return self._handle_general(record)  # a structlog event dict
            if "flag" in attrs and "task_id" in attrs:
                return self._handle_feedback(record)
            if "extra" in attrs and bound_by_loguru(record):
                return self.handle(record)
            if "output" in attrs or "session_id" in attrs:
                notice_no_input(record)
            return False
        engine = self._short_engine
        if engine is not None:
            try:
                if _context_get() is None:
                    item = plain_record(record, engine.backlogged)
                    if item is not None:
                        if OWN_IO and record.thread in OWN_IO and made_by_own_io(record):
                            engine.ignore_own_io()
                            return False
                        engine.submit(item)
                        return True
            except Exception as exc:  # noqa: BLE001 - never raise into the application
                report_error(exc, engine)
                return False
        return self._handle_general(record)

    def _handle_general(self, record: logging.LogRecord) -> bool:
        try:
            filtered = apply_filters(self, record)  # type: ignore[arg-type]
            if filtered is None:
                return False
            self._take(filtered, self._route)
            return True
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            report_error(exc, self._route.engine)
            return False

    def _handle_feedback(self, record: logging.LogRecord) -> bool:
        """A feedback record (``extra={"task_id": ..., "flag": ...}``, no input): to the
        engine's queue, behind the tasks logged before it."""
        engine = self._route.engine
        if engine is None:
            return False  # a queue handler whose listener is not ours: it passes records on
        try:
            filtered = apply_filters(self, record)  # type: ignore[arg-type]
            if filtered is None:
                return False
            self._take_feedback(filtered, engine)
            return True
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            report_error(exc, engine)
            return False

    def _take_feedback(self, record: logging.LogRecord, engine: Engine) -> None:
        if record.thread in OWN_IO and made_by_own_io(record):
            engine.ignore_own_io()
            return
        found = feedback_of(record.__dict__, record.created)
        if isinstance(found, str):
            engine.feedback_invalid(found)
        else:
            engine.submit_feedback(found)

    def emit(self, record: logging.LogRecord) -> None:
        """Submit a task-carrying record (filters are ``handle``'s business, as in logging)."""
        try:
            attrs = record.__dict__
            if "input" in attrs or (type(record.msg) is dict and "input" in record.msg):
                self._take(record, self._route)
            elif "flag" in attrs and "task_id" in attrs and self._route.engine is not None:
                self._take_feedback(record, self._route.engine)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            report_error(exc, self._route.engine)

    def _take(self, record: logging.LogRecord, route: Route) -> None:
        engine = route.engine
        if record.thread in OWN_IO and made_by_own_io(record):
            if engine is not None:
                engine.ignore_own_io()
            return
        snapshot = carried(record)
        if snapshot is None:
            snapshot = snapshot_record(record, route.input_to_str, route.output_to_str, _context_get())
        self._deliver(record, snapshot, route)

    def _deliver(self, record: logging.LogRecord, snapshot: Snapshot, route: Route) -> None:
        assert route.engine is not None
        route.engine.submit(snapshot)

    def addFilter(self, filter: Any) -> None:  # noqa: A002, N802 - the stdlib's names
        super().addFilter(filter)  # type: ignore[misc]
        self._bind_route(*self._route[:3], records=self._route.records)

    def removeFilter(self, filter: Any) -> None:  # noqa: A002, N802
        super().removeFilter(filter)  # type: ignore[misc]
        self._bind_route(*self._route[:3], records=self._route.records)


class PhosphoHandler(TaskIntake, logging.Handler):
    """Turns task-carrying records into phospho events and ships them asynchronously.

    Args:
        level: the handler's level.
        exporter: where batches go instead of phospho's API or the local store (see
            ``phospho_logging.Exporter``).
        **options: any option of ``phospho_logging.configure`` (``api_key``,
            ``project_id``, ``base_url``, ``local_dir``, ``max_batch_size``, ...);
            unset options come from ``PHOSPHO_*`` environment variables.
    """

    def __init__(self, level: int = logging.NOTSET, *, exporter: Any = None, **options: Any) -> None:
        # Options first: a bad one must fail before logging.Handler registers this handler
        # (logging would flush and close a half-built handler at exit).
        resolved = resolve(options)
        super().__init__(level)
        self.options: Options = resolved
        self.engine = Engine(resolved, exporter)
        self._bind_route(self.engine, resolved.input_to_str, resolved.output_to_str)
        notice_start(self.engine)
        self.engine.begin()

    @property
    def exporter(self) -> Any:
        """The engine's exporter."""
        return self.engine.exporter

    def __repr__(self) -> str:
        return f"<PhosphoHandler {self.engine.destination} ({logging.getLevelName(self.level)})>"

    def flush(self, timeout: Optional[float] = None) -> bool:  # type: ignore[override]
        """Without ``timeout`` (as ``logging`` calls it, with its module lock held), ask the
        worker to send what it holds and return at once; with one, wait up to that long for
        delivery (see ``Engine.flush``)."""
        return self.engine.flush(0.0 if timeout is None else timeout)

    def close(self) -> None:
        """Stop accepting work: what is queued is delivered in the background within
        ``shutdown_timeout`` (tasks that still arrive are delivered too). Never blocks."""
        self.engine.shutdown(wait=False)
        super().close()

    def stats(self) -> Dict[str, Any]:
        """Delivery counters (see the README)."""
        return self.engine.stats()
