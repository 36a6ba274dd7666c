"""A stand-in for an OpenAI-compatible chat endpoint, for the tests of what talks to one (the
LLM example, the claim reviewer, verifiers): a real HTTP server on a free loopback port that
answers every chat completion with ``answer(body)`` and keeps every request it got."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatStandIn:
    """``url`` is its /v1 base; ``requests`` holds each as {path, auth, user_agent, body}."""

    def __init__(self, answer: Callable[[dict], str]) -> None:
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stand_in.requests.append({
                    "path": self.path, "auth": self.headers.get("Authorization"),
                    "user_agent": self.headers.get("User-Agent", ""), "body": body,
                })  # fmt: skip
                message = {"role": "assistant", "content": answer(body)}
                reply = {
                    "id": f"chatcmpl-{len(stand_in.requests)}", "object": "chat.completion",
                    "created": 0, "model": body.get("model", "stand-in"),
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }  # fmt: skip
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self) -> None:
        self.server.shutdown()
