"""Streams: every chunk goes straight to your user, and one complete task is logged at the end.

Runs offline, with no LLM and no credentials: the "model" here is a generator of
OpenAI-style chunk dicts. Tasks go to the local store (`phospho-logging tail` shows them),
or to phospho when PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set.
"""

import asyncio
import logging

import phospho_logging

pipeline = phospho_logging.configure()


def fake_llm(prompt, include_usage=True):
    """What openai's client yields with stream=True, as plain dicts."""
    words = f"Here is an answer to: {prompt}".split(" ")
    for i, word in enumerate(words):
        last = i == len(words) - 1
        yield {"model": "gpt-4o-mini",
               "choices": [{"index": 0, "delta": {"content": word + ("" if last else " ")},
                            "finish_reason": "stop" if last else None}]}
    if include_usage:  # openai's stream_options={"include_usage": True}: one more chunk, after the finish
        yield {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}}


# 1. Any stream: log_stream passes the chunks through and logs one task when it ends.
prompt = "What is a stream?"
for chunk in phospho_logging.log_stream(fake_llm(prompt), input=prompt, session_id="s-1"):
    if chunk["choices"]:
        print(chunk["choices"][0]["delta"]["content"], end="", flush=True)
print()


# 2. A generator function of your own: @wrap logs one task per call, when the generator ends.
@phospho_logging.wrap(feature="summary")
def summarize(text):
    for sentence in text.split(". "):
        yield sentence[:20] + "... "


print("".join(summarize("First sentence here. Second one there. Third and last")))

# 3. A consumer that stops early: the task is still logged, marked stream_complete=False.
stream = phospho_logging.log_stream(fake_llm("Tell me everything"), input="Tell me everything")
for chunk in stream:
    print("first chunk only:", chunk["choices"][0]["delta"]["content"])
    break
stream.close()


# 4. Async streams, many at once: one task each, no mixing.
async def fake_async_llm(prompt):
    for word in f"Async answer to {prompt}".split(" "):
        await asyncio.sleep(0)
        yield word + " "


async def main():
    async def one(i):
        return "".join([c async for c in phospho_logging.log_stream(fake_async_llm(f"q{i}"), input=f"q{i}")])

    print(await asyncio.gather(*(one(i) for i in range(3))))


asyncio.run(main())

# 5. Coming from the phospho SDK: MutableGenerator(generator, stop) ends at the stop chunk.
sdk_style = phospho_logging.MutableGenerator(iter(["a", "b", "<END>", "ignored"]), lambda c: c == "<END>", input="x")
print(list(sdk_style))

logging.getLogger("phospho").info("plain log lines are not tasks")
delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")
