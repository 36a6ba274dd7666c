"""A local HTTP server that answers the Hugging Face hub's file API, for fetch tests.

It serves a folder as the dataset repo: ``paths-info`` (sizes and LFS sha256), and ``resolve``
with HEAD, GET and byte ranges, as huggingface_hub calls them when ``HF_ENDPOINT`` points
here. Faults on demand: a download cut off halfway (once per file), or corrupt bytes (once).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn:
    """Serve ``folder`` as ``repo_id`` (a dataset) on a free local port."""

    def __init__(self, folder: Path, repo_id: str) -> None:
        self.folder, self.repo_id = folder, repo_id
        self.cut_once: set[str] = set()
        self.corrupt_once: set[str] = set()
        self.gets: list[tuple[str, str | None]] = []  # (file, Range header) of every GET
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self
        resolve = re.compile(rf"^/datasets/{re.escape(hub.repo_id)}/resolve/[^/]+/(.+)$")
        paths_info = re.compile(rf"^/api/datasets/{re.escape(hub.repo_id)}/paths-info/[^/]+$")

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _file(self) -> Path | None:
                m = resolve.match(urllib.parse.urlparse(self.path).path)
                if not m:
                    return None
                path = hub.folder / urllib.parse.unquote(m.group(1))
                return path if path.is_file() else None

            def _headers(
                self, path: Path, length: int, status: int = 200, extra: dict | None = None
            ) -> None:
                data_sha = hashlib.sha256(path.read_bytes()).hexdigest()
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{data_sha}"')
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def do_HEAD(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                self._headers(path, path.stat().st_size)

            def do_GET(self) -> None:
                path = self._file()
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                rng = self.headers.get("Range")
                hub.gets.append((path.name, rng))
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng else 0
                if path.name in hub.corrupt_once:
                    hub.corrupt_once.discard(path.name)
                    data = bytes(b ^ 0xFF for b in data)
                body = data[start:]
                if start:
                    extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                    self._headers(path, len(body), 206, extra)
                else:
                    self._headers(path, len(body))
                if path.name in hub.cut_once:  # promise it all, send half, hang up
                    hub.cut_once.discard(path.name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def do_POST(self) -> None:
                if not paths_info.match(urllib.parse.urlparse(self.path).path):
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                out = []
                for name in form.get("paths", []):
                    path = hub.folder / name
                    if path.is_file():
                        data = path.read_bytes()
                        sha = hashlib.sha256(data).hexdigest()
                        out.append({"type": "file", "path": name, "size": len(data), "oid": sha[:40],
                                    "lfs": {"oid": sha, "size": len(data), "pointerSize": 134}})  # fmt: skip
                body = json.dumps(out).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
