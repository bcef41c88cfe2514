"""A raw HTTP stream (Ollama, or any server streaming JSON lines or server-sent events),
read with `requests` and logged as one task: the text, the model and the token counts.

This is the phospho guide's Ollama example with one change of import. It runs offline:
with no OLLAMA_URL set it starts a stand-in for Ollama on 127.0.0.1 that streams what
Ollama streams; set OLLAMA_URL=http://localhost:11434 (and OLLAMA_MODEL) to use yours.
Tasks go to the local store (`phospho-logging tail` shows them), or to phospho when
PHOSPHO_API_KEY and PHOSPHO_PROJECT_ID are set.
"""

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

import phospho_logging

pipeline = phospho_logging.configure()


class StandIn(BaseHTTPRequestHandler):
    """Answers POST /api/generate and /api/chat as Ollama does with stream=true: one JSON
    object per line, a word each, then a last line with done=true and the token counts."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path == "/api/chat"
        if chat:  # a canned answer per question: a stand-in, not a model
            words = ["At", " sunset", " light", " crosses", " more", " air,", " so", " reds", " remain."]
        else:
            words = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering."]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")  # one request per connection: a simple stand-in
        self.end_headers()
        self.close_connection = True
        for word in words + [""]:
            line = {"model": body["model"], "created_at": "2026-12-05T10:00:00Z"}
            if chat:
                line["message"] = {"role": "assistant", "content": word}
            else:
                line["response"] = word
            line["done"] = not word
            if not word:
                line.update(done_reason="stop", prompt_eval_count=12, eval_count=len(words))
            data = json.dumps(line).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args):
        pass


url = os.environ.get("OLLAMA_URL")
server = None
if not url:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
model = os.environ.get("OLLAMA_MODEL", "mistral")


# 1. The guide's example: iter_lines() and a MutableGenerator that stops at the "done" line.
def ask(prompt):
    r = requests.post(f"{url}/api/generate", json={"model": model, "prompt": prompt, "stream": True},
                      stream=True, timeout=60)
    r.raise_for_status()
    return phospho_logging.MutableGenerator(r.iter_lines(), stop=lambda line: json.loads(line).get("done"))


prompt = "Why is the sky blue?"
for line in phospho_logging.log(input=prompt, output=ask(prompt), stream=True):
    print(json.loads(line)["response"], end="", flush=True)  # each line as Ollama sent it
print()

# 2. Ollama's chat API, the body cut anywhere (iter_content): the same one task per stream.
messages = [{"role": "user", "content": "And at sunset?"}]
r = requests.post(f"{url}/api/chat", json={"model": model, "messages": messages, "stream": True},
                  stream=True, timeout=60)
body = b"".join(phospho_logging.log_stream(r.iter_content(chunk_size=16), input=messages, session_id="s-1"))
print(f"{len(body)} bytes streamed")

delivered = pipeline.flush(timeout=10)
stats = pipeline.stats()
print(f"delivered: {delivered}; sent {stats['sent']} of {stats['enqueued']} task(s) to the {stats['destination']}")
if server is not None:
    server.shutdown()
    server.server_close()

if not pipeline.options.online:
    import contextlib
    import io

    from phospho_logging.cli import main

    print("\nWhat was logged (`phospho-logging tail -n 2 --json`, a few fields):")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["tail", "-n", "2", "--json", "--local-dir", str(pipeline.options.store_path().parent)])
    # raw_output: the parsed lines; the guide's stop function held the "done" line back from
    # the first stream (its token counts were still read), the second kept it.
    for task in map(json.loads, out.getvalue().splitlines()):
        print(f"  {task['input']!r} -> {task['output']!r}")
        print(f"    model={task['model']} prompt_tokens={task['prompt_tokens']} "
              f"completion_tokens={task['completion_tokens']} raw_output: {len(task['raw_output'])} parsed chunks")
