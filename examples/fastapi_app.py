"""A FastAPI app that logs each LLM call as one phospho task, in the session its client names.

A middleware binds the `X-Session-Id` request header (or a new id when there is none) with
`phospho_logging.context`, so every task logged while handling the request carries it; the
id is echoed back in the response header. The LLM is a local fake (no network): in a real
app, wrap your client's method instead (see openai_wrap.py).

Run as a script, it answers two requests through FastAPI's TestClient (no server, offline)
and exits. To serve it for real, from the repository root:
`pip install uvicorn && uvicorn examples.fastapi_app:app`.
Needs fastapi and httpx (`pip install fastapi httpx`).
"""

import contextlib
import uuid

from fastapi import FastAPI, Request
from pydantic import BaseModel

import phospho_logging


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    phospho_logging.configure()  # reads PHOSPHO_* from the environment
    yield
    phospho_logging.shutdown()  # delivers what is still queued (interpreter exit would too)


app = FastAPI(lifespan=lifespan)


@app.middleware("http")
async def bind_session(request: Request, call_next):
    session_id = request.headers.get("x-session-id") or uuid.uuid4().hex
    # contextvars: the request's own copy, so concurrent requests keep their own session.
    with phospho_logging.context(session_id=session_id):
        response = await call_next(request)
    response.headers["X-Session-Id"] = session_id
    return response


@phospho_logging.wrap(feature="chat")
async def complete(model: str, messages: list) -> dict:
    """A stand-in for `await client.chat.completions.create(...)`, with an OpenAI-style reply."""
    question = messages[-1]["content"]
    answer = f"You asked: {question}"
    prompt_tokens, completion_tokens = len(question.split()), len(answer.split())
    return {
        "model": model,
        "choices": [{"message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


class Question(BaseModel):
    message: str


@app.post("/chat")
async def chat(question: Question) -> dict:
    response = await complete(model="fake-model", messages=[{"role": "user", "content": question.message}])
    return {"answer": response["choices"][0]["message"]["content"]}


if __name__ == "__main__":
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # runs the lifespan: configure() now, shutdown() on leaving
        for session_id, message in (("s-alice", "Capital of France?"), ("s-bob", "What is 2+2?")):
            reply = client.post("/chat", json={"message": message}, headers={"X-Session-Id": session_id})
            print(f"{reply.headers['X-Session-Id']}: {reply.json()['answer']}")
        delivered = phospho_logging.flush(timeout=10)
        stats = phospho_logging.stats()
    print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")
    print("To serve it for real: uvicorn examples.fastapi_app:app  (from the repository root)")
