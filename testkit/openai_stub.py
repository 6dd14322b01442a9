"""A real HTTP server on 127.0.0.1 speaking OpenAI's API, for extraction tests:
POST /v1/chat/completions, GET /v1/models, the files (/v1/files) and batches (/v1/batches)
endpoints.

Behaviour per chat request comes from ``plan`` (consumed first) or ``default``:
"ok", "slow" (``delay_s`` then ok), "400", "429" (Retry-After: 0), "500", "garbage" (200, not JSON),
"nonsense" (a well-formed completion whose content is no answer in any accepted format),
"batch_missing" / "batch_duplicate" (a batched answer without the last report's part, or
with report 1's header twice),
"hang" (never answers within any test timeout).

A request whose user message holds numbered reports (`Report N:`, as OpenAIBackend batches
them) gets one `Report N:` part per report. Each report's findings are the fixed pair below,
unless its text holds `ECHO:<category>`: then `{na}{na}{<category>}{certain}`, so tests can
see which answer went to which report.

Structured outputs: a request with a schema (OpenAI's strict `json_schema`, llama.cpp's
`json_object` + `schema`, or vLLM's `guided_json`) is answered with the same findings as JSON in the schema's shape,
unless ``ignore_format`` is set: then the server answers as if no response_format had been
sent (what `transformers serve` does). ``context_tokens`` makes the server refuse, with
llama.cpp's 400, a request whose prompt (counted in words) plus max_tokens exceeds it, and
/v1/models report it as vLLM does (max_model_len).

Batches run when first looked at after ``batch_polls`` retrievals, each request through the
chat logic above. Their outcome comes from ``batch_plan`` (consumed first) or "completed":
"partial" (completed; the last request failed, in the error file), "expired" (the first half
answered, the rest in the error file as batch_expired), "failed" (validation failed, no output).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMPLETION_TOKENS = 9  # per report answered
FIXED_ANSWER = "{mild}{na}{cardiomegaly}{certain}\n{no}{na}{effusion}"
FIXED_FINDINGS = [("mild", "na", "cardiomegaly", "certain"), ("no", "na", "effusion", "certain")]
_NUMBERED = re.compile(r"^Report (\d+):\n(.*?)(?=\n\nReport \d+:\n|\n\nAnswers:|\Z)", re.DOTALL | re.MULTILINE)


def stub_findings(report: str) -> str:
    echo = re.search(r"ECHO:([a-z]+)", report)
    return f"{{na}}{{na}}{{{echo.group(1)}}}{{certain}}" if echo else FIXED_ANSWER


def stub_json(report: str) -> dict:
    echo = re.search(r"ECHO:([a-z]+)", report)
    rows = [("na", "na", echo.group(1), "certain")] if echo else FIXED_FINDINGS
    return {"findings": [{"severity": s, "location": loc, "category": c, "certainty": cert,
                          "sentence": report.strip().splitlines()[0][:80]} for s, loc, c, cert in rows]}


class StubServer:
    def __init__(self, default: str = "ok", delay_s: float = 0.05, plan: list[str] | None = None,
                 ignore_format: bool = False, context_tokens: int | None = None, batch_polls: int = 1) -> None:
        self.default = default
        self.delay_s = delay_s
        self.plan: deque[str] = deque(plan or [])
        self.ignore_format = ignore_format
        self.context_tokens = context_tokens
        self.batch_polls = batch_polls
        self.batch_plan: deque[str] = deque()
        self.hang_once: set[str] = set()  # a request holding one of these texts hangs, the first time
        self.requests: list[dict] = []  # every chat request body received (batch lines included)
        self.answered: list[str] = []  # report texts whose "ok" reply was sent
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.batch_creations = 0
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

    def chat(self, body: dict, mode: str) -> tuple[int, dict | bytes]:
        """(status, reply) of one chat request in `mode` (not "hang")."""
        if mode in ("400", "429", "500"):
            return int(mode), {"error": {"message": "try later"}}
        if mode == "garbage":
            return 200, b"<html>proxy error</html>"
        if mode == "slow":
            time.sleep(self.delay_s)
        report = body["messages"][-1]["content"]
        prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
        if self.context_tokens and prompt_tokens + (body.get("max_tokens") or 0) > self.context_tokens:
            return 400, {"error": {"message": f"This model's maximum context length is {self.context_tokens} "
                                              f"tokens. However, you requested {prompt_tokens + body['max_tokens']} "
                                              f"tokens ({prompt_tokens} in the messages, {body['max_tokens']} in the "
                                              f"completion). Please reduce the length of the messages or completion.",
                                   "type": "invalid_request_error"}}
        numbered = _NUMBERED.findall(report)
        reports = [text for _, text in numbered] or [report]
        if mode == "nonsense":
            content = "I'm sorry, as an AI I cannot interpret medical images."
        elif self._schema(body):
            answers = [stub_json(text) for text in reports]
            content = json.dumps({"reports": answers} if numbered else answers[0])
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
        with self._lock:
            if mode != "nonsense":
                self.answered.extend(reports)
            self.prompt_tokens_sent += prompt_tokens
        return 200, {
            "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"] + "-served",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    def _schema(self, body: dict) -> bool:
        response_format = body.get("response_format") or {}
        return not self.ignore_format and (response_format.get("type") == "json_schema" or "schema" in response_format
                                           or "guided_json" in body)

    # -- files and batches -------------------------------------------------------------------
    def upload(self, content: bytes, purpose: str, filename: str) -> dict:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = content
        return _file_object(file_id, content, purpose, filename)

    def create_batch(self, request: dict) -> dict:
        with self._lock:
            self.batch_creations += 1
            batch_id = f"batch_{len(self.batches) + 1}"
            batch = {"id": batch_id, "object": "batch", "endpoint": request["endpoint"], "errors": None,
                     "input_file_id": request["input_file_id"], "completion_window": request["completion_window"],
                     "status": "validating", "created_at": int(time.time()), "metadata": request.get("metadata"),
                     "_polls": 0}
            self.batches[batch_id] = batch
        return _public(batch)

    def retrieve_batch(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        batch["_polls"] += 1
        if batch["status"] in ("validating", "in_progress") and batch["_polls"] > self.batch_polls:
            self._run_batch(batch)
        elif batch["status"] == "validating":
            batch["status"] = "in_progress"
        return _public(batch)

    def _run_batch(self, batch: dict) -> None:
        outcome = self.batch_plan.popleft() if self.batch_plan else "completed"
        if outcome == "failed":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "line 1: the model does not exist", "line": 1}]})
            return
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].decode().splitlines() if line]
        ran = lines[:len(lines) // 2] if outcome == "expired" else lines
        outputs, errors = [], []
        for number, line in enumerate(ran):
            if outcome == "partial" and number == len(ran) - 1:
                errors.append({"id": f"r{number}", "custom_id": line["custom_id"], "error": None,
                               "response": {"status_code": 500, "request_id": "x",
                                            "body": {"error": {"message": "server error on this line"}}}})
                continue
            with self._lock:
                self.requests.append(line["body"])
            status, reply = self.chat(line["body"], self.next_mode(line["body"]))
            record = {"id": f"r{number}", "custom_id": line["custom_id"], "error": None,
                      "response": {"status_code": status, "request_id": "x", "body": reply}}
            (outputs if status == 200 else errors).append(record)
        for line in lines[len(ran):]:
            errors.append({"id": "x", "custom_id": line["custom_id"], "response": None,
                           "error": {"code": "batch_expired", "message": "This request could not be executed "
                                                                          "before the completion window expired."}})
        batch["status"] = "expired" if outcome == "expired" else "completed"
        if outputs:
            batch["output_file_id"] = self.upload(_jsonl(outputs), "batch_output", "output.jsonl")["id"]
        if errors:
            batch["error_file_id"] = self.upload(_jsonl(errors), "batch_output", "errors.jsonl")["id"]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/models"):
                    model = {"id": "stub", "object": "model", "created": 0, "owned_by": "stub"}
                    if server.context_tokens:
                        model["max_model_len"] = server.context_tokens
                    self._json(200, {"object": "list", "data": [model]})
                elif match := re.search(r"/files/([^/]+)/content$", path):
                    self._send(200, server.files[match.group(1)], {}, "application/octet-stream")
                elif path.endswith("/batches"):
                    self._json(200, {"object": "list", "data": [_public(b) for b in server.batches.values()],
                                     "has_more": False})
                elif match := re.search(r"/batches/([^/]+)$", path):
                    self._json(200, server.retrieve_batch(match.group(1)))
                else:
                    self._json(404, {"error": {"message": f"no route {path}"}})

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                path = self.path.split("?")[0].rstrip("/")
                if path.endswith("/files"):
                    fields = _multipart(self.headers["Content-Type"], raw)
                    self._json(200, server.upload(fields["file"][1], fields["purpose"][1].decode(),
                                                  fields["file"][0] or "input.jsonl"))
                    return
                if path.endswith("/batches"):
                    self._json(200, server.create_batch(json.loads(raw)))
                    return
                body = json.loads(raw)
                with server._lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    mode = server.next_mode(body)
                    if mode == "hang":
                        time.sleep(30)
                        return
                    status, reply = server.chat(body, mode)
                    if isinstance(reply, bytes):
                        self._send(status, reply, {}, "application/json")
                    else:
                        self._json(status, reply, {"Retry-After": "0"} if status == 429 else {})
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(payload).encode(), headers or {}, "application/json")

            def _send(self, status: int, payload: bytes, headers: dict[str, str], content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """name -> (filename, bytes) of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    return {part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()}


def _file_object(file_id: str, content: bytes, purpose: str, filename: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed"}


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()
