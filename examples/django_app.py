"""Django: phospho-logging in the LOGGING setting, and a view that logs one task per answer.

In a project, put the LOGGING dict below in settings.py and log from any view with
`logging.getLogger("phospho")`. This file is a whole (one-file) Django app: run it to send
three requests through Django's test client, offline (tasks go to the local store, or to
phospho when PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set).
"""

import logging

import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

import phospho_logging

settings.configure(
    DEBUG=False,
    SECRET_KEY="example-only",
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    # Django applies this with logging.config.dictConfig at setup: PhosphoHandler reads
    # PHOSPHO_* from the environment (or takes api_key=, project_id=... keys here).
    LOGGING={
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "phospho": {"class": "phospho_logging.PhosphoHandler", "level": "INFO"},
        },
        "loggers": {
            "phospho": {"handlers": ["phospho"], "level": "INFO", "propagate": False},
        },
    },
)

log = logging.getLogger("phospho")


def ask(request):
    question = request.GET.get("q", "")
    answer = f"You asked: {question}"  # your LLM call
    log.info("answered", extra={"input": question, "output": answer,
                                "session_id": request.headers.get("X-Session-Id"),
                                "metadata": {"path": request.path}})
    return JsonResponse({"answer": answer})


urlpatterns = [path("ask", ask)]

if __name__ == "__main__":
    django.setup()
    from django.test import Client

    client = Client()
    for question in ("What is Django?", "And its ORM?", "And logging?"):
        response = client.get("/ask", {"q": question}, HTTP_X_SESSION_ID="django-demo")
        print(response.status_code, response.json()["answer"])
    # A web server's workers flush at exit; here the script ends, so flush to print the result.
    delivered = phospho_logging.flush(timeout=10)
    stats = phospho_logging.stats()
    print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the "
          f"{stats['destination']}")
