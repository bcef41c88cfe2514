"""The built-in masks of ``configure(redact=True)``, for use in a ``redact`` function of your own.

Example::

    from phospho_logging.redact import mask_event

    def redact(event):
        if event["metadata"].get("internal"):
            return None  # not sent at all
        event["metadata"].pop("customer_name", None)
        return mask_event(event)  # and the built-in masks

    phospho_logging.configure(redact=redact)
"""

from ._redact import mask_event, mask_text

__all__ = ["mask_event", "mask_text"]
