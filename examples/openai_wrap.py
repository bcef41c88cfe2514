"""The OpenAI client, wrapped: every call and every stream becomes one complete phospho task.

Runs offline: the client talks to a loopback fake of the Chat Completions API started
below (from tests/fake_openai.py), and with no PHOSPHO_API_KEY / PHOSPHO_PROJECT_ID the
tasks go to the local store. To use the real API, drop the fake and its base_url.
Needs the openai package (`pip install openai`).
"""

import asyncio
import sys
from pathlib import Path

import openai

import phospho_logging

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests/fake_openai.py
from tests.fake_openai import FakeOpenAI

pipeline = phospho_logging.configure()
fake = FakeOpenAI().start()
try:
    client = openai.OpenAI(base_url=fake.url + "/v1", api_key="not-needed", max_retries=0)
    # One line: the method is replaced in place, everything else about the client is unchanged.
    client.chat.completions.create = phospho_logging.wrap(client.chat.completions.create, feature="chat")

    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of France?"}]
    response = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    print(response.choices[0].message.content)

    # A stream: chunks reach you as they arrive; the task is logged once, at the end, with the usage.
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True,
                                            stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()

    # A failed call: the exception is openai's, unchanged, and the task records it.
    try:
        client.chat.completions.create(model="error-429", messages=messages)
    except openai.RateLimitError as exc:
        print("rate limited:", type(exc).__name__)

    # The async client: awaited calls and async streams are logged the same way.
    async def main():
        aclient = openai.AsyncOpenAI(base_url=fake.url + "/v1", api_key="not-needed", max_retries=0)
        aclient.chat.completions.create = phospho_logging.wrap(aclient.chat.completions.create)
        try:
            stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
            print("".join([c.choices[0].delta.content or "" async for c in stream]))
        finally:
            await aclient.close()

    asyncio.run(main())
finally:
    fake.stop()

delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")
