"""In-memory stand-in for the Hugging Face Hub HTTP protocol, for tests only.

This is NOT the Hub and NOT a general-purpose server. It implements just enough of the Hub's
HTTP protocol (for model repos named "namespace/name") for the real `huggingface_hub` and
`transformers` client code to run end to end against it when `HF_ENDPOINT` points at it:
`create_repo`, `upload_folder` / `create_commit`, `model_info` / `repo_info`,
`list_repo_tree`, `hf_hub_download`, `snapshot_download` and `from_pretrained`.

It does NOT implement the large-file paths (Git LFS batch API, xet storage): the preupload call
always answers `uploadMode: "regular"`, so the client sends every file inline (base64) in the
NDJSON commit request, whatever its size. Also not implemented: datasets/spaces, branches other
than "main", tags, pull requests, gitignore rules, deleting repos, pagination, real accounts.

State lives in memory only (`HubServer.repos`). Auth is deliberately trivial: any non-empty
bearer token is accepted; private repos answer 401 without one, and writes always need one.

`huggingface_hub` reads `HF_ENDPOINT` at import time, so clients must run in a separate process
started with `HF_ENDPOINT=<server.endpoint>` (plus `HF_HUB_OFFLINE=0`, a scratch `HF_HOME`,
`HF_HUB_DISABLE_TELEMETRY=1`, and `DISABLE_SAFETENSORS_CONVERSION=1` so that transformers never
calls the external safetensors-convert Space for repos that only hold `.bin` weights).
"""

import base64
import hashlib
import json
import re
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

# /api/models/{ns}/{name}[/{op}/{revision}[/{path}]] ; the revision is URL-quoted by the client.
_API_RE = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree|preupload|commit)/([^/]+)(?:/(.*))?)?$")
# /{ns}/{name}/resolve/{revision}/{path}: file download (HEAD for metadata, GET for content).
_RESOLVE_RE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha(data: bytes) -> str:
    """Git object id of a blob; the Hub uses it as ETag and `oid` of regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so keep-alive/chunking never matter.
    server_version = "px-hf-fake-hub/0.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # ---------------------------------------------------------------- plumbing
    @property
    def hub(self) -> "HubServer":
        return self.server.hub

    def _send(self, status, body=b"", headers=None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj, headers=None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _error(self, status, code, message, headers=None):
        # huggingface_hub maps X-Error-Code to exception types (hf_raise_for_status):
        # RepoNotFound -> RepositoryNotFoundError, RevisionNotFound -> RevisionNotFoundError,
        # EntryNotFound -> RemoteEntryNotFoundError (transformers relies on it to probe optional files).
        headers = dict(headers or {}, **{"X-Error-Message": message})
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and bool(auth[7:].strip())

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _repo(self, repo_id):
        """Repo state, or None after sending 404 (missing) / 401 (private, no token) like the Hub."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        elif repo["private"] and not self._authorized():
            self._error(401, "RepoNotFound", "Repository not found")
        else:
            return repo
        return None

    def _commit(self, repo, revision):
        """Commit dict for "main" (the only branch) or a full commit sha; None after sending 404."""
        commits = repo["commits"]
        found = commits[-1] if revision == "main" and commits else next(
            (c for c in commits if _SHA_RE.match(revision) and c["sha"] == revision), None)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return found

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self):
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        with self.hub._lock:
            self.hub.requests.append((self.command, url.path))
        route = (self.command, url.path)
        if route == ("POST", "/api/repos/create"):
            return self._create_repo()
        if route == ("POST", "/api/validate-yaml"):  # create_commit validates README.md metadata
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if m := _API_RE.match(url.path):
            repo_id, op = m.group(1), m.group(2)
            revision, path = unquote(m.group(3) or "main"), unquote(m.group(4) or "")
            if self.command == "GET" and op in (None, "revision"):
                return self._model_info(repo_id, revision)
            if self.command == "GET" and op == "tree":
                return self._tree(repo_id, revision, path, query.get("recursive", "").lower() in ("1", "true"))
            if self.command == "POST" and op == "preupload":
                return self._preupload(repo_id, revision)
            if self.command == "POST" and op == "commit":
                return self._create_commit(repo_id, revision)
        if (m := _RESOLVE_RE.match(url.path)) and self.command in ("GET", "HEAD"):
            return self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
        self._error(404, None, f"Not implemented by the fake hub: {self.command} {url.path}")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # ---------------------------------------------------------------- endpoints
    def _create_repo(self):
        payload = json.loads(self._body() or b"{}")
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        if payload.get("type", "model") != "model" or not payload.get("organization"):
            return self._error(400, None, "Fake hub only supports model repos named 'namespace/name'")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.hub.endpoint}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub.repos:  # client treats 409 as success when exist_ok=True
                return self._json(409, {"error": "You already created this model repo", "url": url})
            private = payload.get("visibility", "public") == "private" or bool(payload.get("private"))
            # Like the Hub, a new repo starts with one commit holding .gitattributes, so "main" resolves.
            initial = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            sha = hashlib.sha1(f"{repo_id}\ninitial commit\n".encode()).hexdigest()
            self.hub.repos[repo_id] = {"private": private,
                                       "commits": [{"sha": sha, "message": "initial commit", "files": initial}]}
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _model_info(self, repo_id, revision):
        if (repo := self._repo(repo_id)) is None:
            return
        if (commit := self._commit(repo, revision)) is None:
            return
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        files = sorted(commit["files"].items())
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)} for p, d in files]
        self._json(200, {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.split("/")[0], "sha": commit["sha"], "private": repo["private"],
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": now, "createdAt": now, "siblings": siblings,
        })

    def _tree(self, repo_id, revision, prefix, recursive):
        if (repo := self._repo(repo_id)) is None or (commit := self._commit(repo, revision)) is None:
            return
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        entries = {}
        for path, data in sorted(commit["files"].items()):
            if not path.startswith(base):
                continue
            parts = path[len(base):].split("/")
            for i in range(1, len(parts)):  # folders on the way to the file
                if i == 1 or recursive:
                    folder = base + "/".join(parts[:i])
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "path": folder})
            if len(parts) == 1 or recursive:
                entries[path] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
        if base and not entries:
            return self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
        self._json(200, list(entries.values()))  # one page: no "Link: rel=next" header

    def _preupload(self, repo_id, revision):
        payload = json.loads(self._body() or b"{}")
        if (repo := self._repo(repo_id)) is None:
            return
        if revision != "main":
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = repo["commits"][-1]["files"] if repo["commits"] else {}
        # Always "regular" (inline base64 in the commit): no LFS / xet upload ever happens.
        # "oid" is the git blob sha of the current remote file; the client skips files whose
        # local sha matches (no-op uploads), exactly as against the real Hub.
        self._json(200, {"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha(files[f["path"]]) if f["path"] in files else None}
            for f in payload.get("files", [])
        ]})

    def _create_commit(self, repo_id, revision):
        body = self._body()
        if (repo := self._repo(repo_id)) is None:
            return
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        if revision != "main":
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        # NDJSON body: {"key": "header", "value": {summary, description, parentCommit?}} then one
        # line per operation: "file" (base64 content), "deletedFile", "deletedFolder" (or "lfsFile").
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self.hub._lock:
            head = repo["commits"][-1] if repo["commits"] else {"sha": None, "files": {}}
            if header.get("parentCommit") and not (head["sha"] or "").startswith(header["parentCommit"]):
                return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(head["files"])
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    raw = value["content"].encode()
                    files[value["path"]] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: d for p, d in files.items() if not p.startswith(folder)}
                elif key == "lfsFile":
                    return self._error(400, None, "Fake hub does not implement LFS/xet uploads")
            # Commit sha: sha1 over parent, message and tree, plus the commit index so it is always new.
            h = hashlib.sha1(f"{head['sha']}\n{len(repo['commits'])}\n{header.get('summary', '')}\n".encode())
            for path, data in sorted(files.items()):
                h.update(f"{path}\0{git_blob_sha(data)}\n".encode())
            commit = {"sha": h.hexdigest(), "message": header.get("summary", ""), "files": files}
            repo["commits"].append(commit)
        self._json(200, {"success": True, "commitOid": commit["sha"], "pullRequestUrl": None,
                         "commitUrl": f"{self.hub.endpoint}/{repo_id}/commit/{commit['sha']}", "hookOutput": ""})

    def _resolve(self, repo_id, revision, path):
        if (repo := self._repo(repo_id)) is None or (commit := self._commit(repo, revision)) is None:
            return
        # X-Repo-Commit is mandatory for hf_hub_download (also on EntryNotFound, so the client can
        # cache the file's absence under .no_exist/<commit>/).
        headers = {"X-Repo-Commit": commit["sha"]}
        data = commit["files"].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", headers)
        # ETag = git blob sha of regular files (LFS files would carry X-Linked-Etag/-Size + a redirect).
        headers.update({"ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes"})
        status, start, end = 200, 0, len(data)
        if m := re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", "")):  # resumed downloads
            start, end = int(m.group(1)), int(m.group(2)) + 1 if m.group(2) else len(data)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        self._send(status, data[start:end], headers, content_type="application/octet-stream")


class HubServer:
    """Fake Hub on 127.0.0.1:<free port>; use as a context manager or via start()/stop().

    repos:    repo_id -> {"private": bool, "commits": [{"sha": str, "message": str, "files": {path: bytes}}]}
              (oldest commit first; create_repo makes an "initial commit" with .gitattributes, as the Hub).
    requests: (method, path-without-query) of every request received, in arrival order.
    """

    def __init__(self):
        self.repos: dict = {}
        self.requests: list = []
        self.endpoint = None
        self._lock = threading.RLock()
        self._httpd = None
        self._thread = None

    def start(self) -> "HubServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
