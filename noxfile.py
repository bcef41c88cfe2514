"""The test suite on every supported Python: ``nox`` (all), ``nox -s tests-3.9`` (one).

Interpreters are found on PATH (``python3.9`` ...). Missing ones are skipped, never
downloaded. With pyenv, its shims answer for a version only when ``PYENV_VERSION`` lists
it; ``.ci/run`` sets that up.
"""

from __future__ import annotations

import nox

PYTHONS = ["3.9", "3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = False  # skip, do not fail, a missing version
nox.options.reuse_existing_virtualenvs = True  # a re-run only re-checks the install
if hasattr(nox.options, "download_python"):  # nox >= 2025.2: never fetch an interpreter
    nox.options.download_python = "never"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install the package with its dev extra and run pytest (extra arguments go to pytest)."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def orjson(session: nox.Session) -> None:
    """The serializer and delivery tests with the ``orjson`` extra installed (the default
    sessions run without it, as most installs do), on the interpreter nox runs on."""
    session.install("-e", ".[dev,orjson]")
    session.run(
        "python", "-m", "pytest", "-q", "tests/test_serialize.py", "tests/test_task.py", "tests/test_pipeline.py",
        "tests/test_faults.py", *session.posargs,
    )
