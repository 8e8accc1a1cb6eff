"""A stand-in for the Hugging Face Hub on 127.0.0.1, so tests (and `make perf`) run the real
huggingface_hub code paths with no network: point HF_ENDPOINT at it.

It answers what lmiflow asks, the way the Hub does (huggingface_hub's `hf_raise_for_status`
and `get_hf_file_metadata` read these headers):
- GET /api/models/{repo}[/revision/{rev}][?blobs=true]: model info (sha, gated, private,
  siblings with size, blobId and, for LFS files, lfs.sha256/size).
- HEAD/GET /{repo}/resolve/{rev}/{file}: small files are answered directly (ETag = git blob
  id); LFS files redirect (302) to a second server on another port, like the Hub's CDN, with
  X-Linked-Etag (sha256) and X-Linked-Size. GET honours Range.
- Access: a gated repo answers 401 (no token) or 403 (a token not on its list) with
  X-Error-Code: GatedRepo; a private repo answers 401 RepoNotFound without a valid token.
Every Authorization header either server receives is recorded, so a test can prove the token
went to the Hub and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    private: bool = False
    tokens: set[str] = field(default_factory=set)  # tokens allowed to read the files
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    corrupt: set[str] = field(default_factory=set)  # files served with a flipped byte
    slow: dict[str, float] = field(default_factory=dict)  # file -> seconds per MiB served


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


class HubStandIn:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.auth_seen: list[tuple[str, str, str | None]] = []  # (server, path, Authorization)
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        # a short poll: shutdown() waits for it, twice per stand-in, at the end of every test
        self._threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05},
                                          daemon=True)
                         for s in (self._hub, self._cdn)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()

    # ---- the answers -----------------------------------------------------------------------

    def _handler(self, server: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._answer(self, server, head=True)

            def do_GET(self):
                hub._answer(self, server, head=False)

        return Handler

    def _answer(self, h: BaseHTTPRequestHandler, server: str, head: bool) -> None:
        parts = urlsplit(h.path)
        path = unquote(parts.path)
        self.auth_seen.append((server, path, h.headers.get("Authorization")))
        if server == "cdn":
            return self._cdn_file(h, path, head)
        m = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
        if m:
            return self._info(h, m.group(1), m.group(2), parse_qs(parts.query))
        m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if m:
            return self._resolve(h, m.group(1), m.group(2), m.group(3), head)
        self._send(h, 404, b"not found", {"X-Error-Code": "RepoNotFound"})

    def _token(self, h: BaseHTTPRequestHandler) -> str | None:
        auth = h.headers.get("Authorization") or ""
        return auth[7:] if auth.startswith("Bearer ") else None

    def _denied(self, h, repo_id: str, files: bool) -> bool:
        repo = self.repos.get(repo_id)
        token = self._token(h)
        if repo is None or (repo.private and token not in repo.tokens):
            self._send(h, 401, b'{"error": "Repository not found"}',
                       {"X-Error-Code": "RepoNotFound",
                        "X-Error-Message": "Repository not found"})
            return True
        if files and repo.gated and token not in repo.tokens:
            status = 401 if token is None else 403
            msg = (f"Access to model {repo_id} is restricted. You must have access to it and be "
                   "authenticated to access it." if token is None else
                   f"Access to model {repo_id} is restricted and you are not in the authorized "
                   "list.")
            self._send(h, status, json.dumps({"error": msg}).encode(),
                       {"X-Error-Code": "GatedRepo", "X-Error-Message": msg})
            return True
        return False

    def _info(self, h, repo_id: str, rev: str | None, query: dict) -> None:
        if self._denied(h, repo_id, files=False):
            return
        repo = self.repos[repo_id]
        if rev not in (None, "main", repo.sha):
            self._send(h, 404, b"", {"X-Error-Code": "RevisionNotFound"})
            return
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for name, data in sorted(repo.files.items()):
            s: dict = {"rfilename": name}
            if blobs:
                s |= {"size": len(data), "blobId": git_blob_id(data)}
                if is_lfs(name):
                    s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "pointerSize": 134}
            siblings.append(s)
        body = {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": repo.private,
                "gated": "manual" if repo.gated else False, "siblings": siblings}
        self._send(h, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})

    def _resolve(self, h, repo_id: str, rev: str, name: str, head: bool) -> None:
        if self._denied(h, repo_id, files=True):
            return
        repo = self.repos[repo_id]
        if rev not in ("main", repo.sha):
            self._send(h, 404, b"", {"X-Error-Code": "RevisionNotFound"})
            return
        if name not in repo.files:
            self._send(h, 404, b"", {"X-Error-Code": "EntryNotFound"})
            return
        data = repo.files[name]
        common = {"X-Repo-Commit": repo.sha}
        if is_lfs(name):
            sha = hashlib.sha256(data).hexdigest()
            self._send(h, 302, b"", common | {
                "Location": f"{self.cdn_url}/{repo_id}/{sha}/{name}", "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)), "ETag": f'"{git_blob_id(data)}"'})
            return
        self._body(h, repo, name, data, head, common | {"ETag": f'"{git_blob_id(data)}"'})

    def _cdn_file(self, h, path: str, head: bool) -> None:
        m = re.match(r"^/([^/]+/[^/]+)/([0-9a-f]{64})/(.+)$", path)
        repo = self.repos.get(m.group(1)) if m else None
        if not m or repo is None or m.group(3) not in repo.files:
            self._send(h, 404, b"", {})
            return
        self._body(h, repo, m.group(3), repo.files[m.group(3)], head, {})

    def _body(self, h, repo: Repo, name: str, data: bytes, head: bool, headers: dict) -> None:
        if name in repo.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        status = 200
        rng = h.headers.get("Range")
        m = re.match(r"^bytes=(\d+)-(\d*)$", rng or "")
        if m:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            headers = headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
            data, status = data[start:end + 1], 206
        h.send_response(status)
        for k, v in (headers | {"Content-Length": str(len(data)),
                                "Accept-Ranges": "bytes"}).items():
            h.send_header(k, v)
        h.end_headers()
        if head:
            return
        delay = repo.slow.get(name, 0.0)
        step = 256 * 1024
        for i in range(0, len(data), step):
            try:
                h.wfile.write(data[i:i + step])
            except (BrokenPipeError, ConnectionResetError):
                return
            if delay:
                time.sleep(delay / 4)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in (headers | {"Content-Length": str(len(body))}).items():
            h.send_header(k, v)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
