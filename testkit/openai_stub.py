"""A real HTTP server on 127.0.0.1 speaking POST /v1/chat/completions, for extraction tests.

Behaviour per request comes from ``plan`` (consumed first) or ``default``:
"ok", "slow" (``delay_s`` then ok), "400", "429" (Retry-After: 0), "500", "garbage" (200, not JSON),
"nonsense" (a well-formed completion whose content is no answer in any accepted format),
"batch_missing" / "batch_duplicate" (a batched answer without the last report's part, or
with report 1's header twice),
"hang" (never answers within any test timeout).

A request whose user message holds numbered reports (`Report N:`, as OpenAIBackend batches
them) gets one `Report N:` part per report. Each report's findings are the fixed pair below,
unless its text holds `ECHO:<category>`: then `{na}{na}{<category>}{certain}`, so tests can
see which answer went to which report.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMPLETION_TOKENS = 9  # per report answered
FIXED_ANSWER = "{mild}{na}{cardiomegaly}{certain}\n{no}{na}{effusion}"
_NUMBERED = re.compile(r"^Report (\d+):\n(.*?)(?=\n\nReport \d+:\n|\n\nAnswers:|\Z)", re.DOTALL | re.MULTILINE)


def stub_findings(report: str) -> str:
    echo = re.search(r"ECHO:([a-z]+)", report)
    return f"{{na}}{{na}}{{{echo.group(1)}}}{{certain}}" if echo else FIXED_ANSWER


class StubServer:
    def __init__(self, default: str = "ok", delay_s: float = 0.05, plan: list[str] | None = None) -> None:
        self.default = default
        self.delay_s = delay_s
        self.plan: deque[str] = deque(plan or [])
        self.hang_once: set[str] = set()  # a request holding one of these texts hangs, the first time
        self.requests: list[dict] = []  # every request body received
        self.answered: list[str] = []  # report texts whose "ok" reply was sent
        self.prompt_tokens_sent = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> "StubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def next_mode(self, body: dict | None = None) -> str:
        with self._lock:
            content = body["messages"][-1]["content"] if body else ""
            marker = next((text for text in self.hang_once if text in content), None)
            if marker is not None:
                self.hang_once.discard(marker)
                return "hang"
            return self.plan.popleft() if self.plan else self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._respond(body, server.next_mode(body))
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _respond(self, body: dict, mode: str) -> None:
                if mode == "hang":
                    time.sleep(30)
                    return
                if mode in ("400", "429", "500"):
                    self._send(int(mode), b'{"error": {"message": "try later"}}',
                               {"Retry-After": "0"} if mode == "429" else {})
                    return
                if mode == "garbage":
                    self._send(200, b"<html>proxy error</html>", {})
                    return
                if mode == "slow":
                    time.sleep(server.delay_s)
                report = body["messages"][-1]["content"]
                numbered = _NUMBERED.findall(report)
                reports = [text for _, text in numbered] or [report]
                if mode == "nonsense":
                    content = "I'm sorry, as an AI I cannot interpret medical images."
                elif numbered:
                    parts = [f"Report {n}:\n{stub_findings(text)}" for n, text in numbered]
                    if mode == "batch_missing":
                        parts, reports = parts[:-1], reports[:-1]
                    elif mode == "batch_duplicate":
                        parts[1] = parts[1].replace(f"Report {numbered[1][0]}:", "Report 1:")
                    content = "\n\n".join(parts)
                else:
                    content = stub_findings(report)
                completion_tokens = COMPLETION_TOKENS * len(reports)
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                reply = {
                    "id": "cmpl-1", "object": "chat.completion", "created": 0,
                    "model": body["model"] + "-served",
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {
                        "role": "assistant",
                        "content": content}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens},
                }
                self._send(200, json.dumps(reply).encode(), {})
                with server._lock:
                    if mode != "nonsense":
                        server.answered.extend(reports)
                    server.prompt_tokens_sent += prompt_tokens

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler
