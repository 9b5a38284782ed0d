"""An OpenAI-compatible chat-completions server on 127.0.0.1, scriptable per request.

    python -m roadmap_pipeline.testing.llm_server [--latency 0.2] [--port 0]

(run alone it prints its base URL and serves valid replies until killed; ``GET /v1/_stats``
returns its counters).

A real socket on an ephemeral port (stdlib ``http.server``, one thread per request), so the
generator is tested through the real ``openai`` client and HTTP stack, with no patching.

By default every request gets a valid reply for the item it asks for (recognised from the
``Item: <name>`` line of the prompt), after ``latency_s``. ``script(...)`` queues behaviours that
the next requests consume in order: malformed JSON, JSON that does not validate, an HTTP status
(429 with ``Retry-After``, 500, 400...), or a reply slower than the client's timeout. The server
counts calls, records every request body and the peak number of requests in flight.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from roadmap_pipeline.domain.content import QuizContent, ResourcesContent, TutorialContent
from roadmap_pipeline.domain.framework import Concept
from roadmap_pipeline.domain.statuses import ItemType
from roadmap_pipeline.generation.generator import ConceptContext
from roadmap_pipeline.generation.offline import OfflineGenerator

_ITEM_LINE = re.compile(r"^Item: (tutorial|resources|quiz)$", re.MULTILINE)
_CONCEPT = re.compile(r'"concept": "((?:[^"\\]|\\.)*)"')

StepKind = Literal["valid", "malformed", "invalid", "status", "slow"]


@dataclass(frozen=True)
class Step:
    """What the server does with one request."""

    kind: StepKind
    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    message: str = ""

    @classmethod
    def valid(cls) -> Step:
        return cls("valid")

    @classmethod
    def malformed(cls) -> Step:
        """Text that is not JSON at all."""
        return cls("malformed")

    @classmethod
    def invalid(cls) -> Step:
        """JSON that parses but does not validate against the item's model."""
        return cls("invalid")

    @classmethod
    def error(cls, status: int, message: str = "", retry_after: str | None = None) -> Step:
        return cls("status", status=status, retry_after=retry_after, message=message)

    @classmethod
    def slow(cls, delay_s: float) -> Step:
        """A valid reply that arrives only after ``delay_s``."""
        return cls("slow", delay_s=delay_s)


@dataclass
class RecordedRequest:
    body: dict[str, Any]
    received_at: float
    headers: dict[str, str] = field(default_factory=dict)  # names in lower case
    status: int = 0

    @property
    def item(self) -> str | None:
        return _item_of(self.body)

    @property
    def response_format(self) -> str | None:
        fmt = self.body.get("response_format") or {}
        return fmt.get("type")

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])


@dataclass
class _State:
    latency_s: float
    json_schema_supported: bool
    steps: deque[Step] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class LLMServer:
    """Start with ``with LLMServer() as server:``; point a client at ``server.base_url``."""

    def __init__(
        self, latency_s: float = 0.0, *, json_schema_supported: bool = True, port: int = 0
    ) -> None:
        self._state = _State(latency_s=latency_s, json_schema_supported=json_schema_supported)
        state = self._state

        class Handler(_Handler):
            shared = state

        self._httpd = _Server(("127.0.0.1", port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def latency_s(self) -> float:
        return self._state.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self._state.latency_s = value

    def script(self, *steps: Step) -> None:
        """Queue behaviours for the next requests, in order (then back to valid replies)."""
        with self._state.lock:
            self._state.steps.extend(steps)

    @property
    def calls(self) -> int:
        with self._state.lock:
            return len(self._state.requests)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def peak_in_flight(self) -> int:
        return self._state.peak_in_flight

    def reset(self) -> None:
        with self._state.lock:
            self._state.steps.clear()
            self._state.requests.clear()
            self._state.peak_in_flight = 0

    def start(self) -> LLMServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="llm-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@contextmanager
def running_server(latency_s: float = 0.0, **kwargs: Any) -> Iterator[LLMServer]:
    with LLMServer(latency_s, **kwargs) as server:
        yield server


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) closes the socket before a slow reply is written.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    shared: _State
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    # Headers and body go out in separate writes; with Nagle's algorithm and the client's
    # delayed ACK every reply would wait ~40 ms on a kept-alive connection.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output clean

    def do_GET(self) -> None:
        # Counters for a client in another process (the benchmark runs the server apart).
        if self.path.rstrip("/").endswith("/_stats"):
            state = self.shared
            with state.lock:
                stats = {"calls": len(state.requests), "peak_in_flight": state.peak_in_flight}
            self._send(200, stats)
            return
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(raw or b"{}")
        state = self.shared
        record = RecordedRequest(
            body=body,
            received_at=time.monotonic(),
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        with state.lock:
            state.requests.append(record)
            step = state.steps.popleft() if state.steps else Step.valid()
            state.in_flight += 1
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            latency = state.latency_s
        try:
            self._answer(body, step, latency, record)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _answer(
        self, body: dict[str, Any], step: Step, latency: float, record: RecordedRequest
    ) -> None:
        time.sleep(latency + step.delay_s)
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema" and not self.shared.json_schema_supported:
            record.status = 400
            self._error(400, "response_format json_schema is not supported by this server")
            return
        if step.kind == "status":
            record.status = step.status
            headers = {"Retry-After": step.retry_after} if step.retry_after else {}
            self._error(step.status, step.message or f"scripted HTTP {step.status}", headers)
            return
        item = _item_of(body)
        if step.kind == "malformed":
            content = '{"title": "unfinished'
        elif step.kind == "invalid" or item is None:
            content = json.dumps({"unexpected": True, "item": item})
        else:
            content = json.dumps(valid_content(ItemType(item), _concept_of(body)))
        record.status = 200
        self._send(200, _completion(body, content))

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        payload = {"error": {"message": message, "type": "scripted", "code": str(status)}}
        self._send(status, payload, headers)

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _item_of(body: dict[str, Any]) -> str | None:
    for message in body.get("messages") or []:
        found = _ITEM_LINE.search(str(message.get("content") or ""))
        if found:
            return found.group(1)
    return None


def _concept_of(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        found = _CONCEPT.search(str(message.get("content") or ""))
        if found:
            return str(json.loads(f'"{found.group(1)}"'))
    return "a concept"


def valid_content(item: ItemType, concept_name: str) -> dict[str, Any]:
    """A reply that validates against the item's model (built by the offline generator)."""
    context = ConceptContext(
        roadmap_id="llm-server",
        roadmap_title="Loopback roadmap",
        stage_name="Stage",
        module_name="Module",
        concept=Concept(concept_id="c", name=concept_name, keywords=["basics", "practice"]),
    )
    generator = OfflineGenerator()
    content: TutorialContent | ResourcesContent | QuizContent
    if item is ItemType.TUTORIAL:
        content = generator.tutorial(context)
    elif item is ItemType.RESOURCES:
        content = generator.resources(context)
    else:
        content = generator.quiz(context)
    return content.model_dump(mode="json")


def _completion(body: dict[str, Any], content: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-loopback-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "loopback"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a loopback OpenAI-compatible LLM server")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = LLMServer(args.latency, port=args.port).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
