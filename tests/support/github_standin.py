"""A GitHub stand-in: the REST endpoints the GitHub publisher calls, served from real git repositories.

No GitHub-API-compatible forge can be installed here, so this small threaded HTTP server plays one, on
127.0.0.1 by default. Every repository is a bare git repository under ``root/<owner>/<name>.git``, and every
endpoint works on it with git plumbing (hash-object, update-index on a private index, write-tree,
commit-tree, update-ref with the expected old value, merge-tree --write-tree), so blobs, trees, commits,
refs and merges are real git objects that `git clone` sees. Pull requests, labels and installation tokens
are kept in memory. The repositories are also served over git's smart HTTP (`git http-backend`) at
``/<owner>/<name>.git``, like GitHub, so a Flux source-controller (or `git clone`) can read them.

REST API under ``/api/v3`` (GitHub Enterprise layout; PyGithub's ``base_url``):
repos, branches, git/{ref,refs,matching-refs,blobs,trees,commits}, commits (list, one), compare, contents,
pulls (create, list, get, update, merge), issues/{n}/labels, app installation tokens (JWT checked).

Pull requests merge the three ways GitHub does (``merge_method``): ``merge`` (a merge commit, two parents),
``squash`` (one commit, one parent; default message "<title> (#<n>)" followed by every commit's message) and
``rebase`` (each commit re-created on top of the base, one parent each).

Behaviours the publisher must cope with, as GitHub has them: 422 "A pull request already exists", 422 "No
commits between", 405 "not mergeable" on conflicts, 409 when the head moved, 422 when reopening a pull
request whose branch was force-pushed, and injected faults (:meth:`GitHubStandIn.inject`) such as a 403
secondary rate limit with ``Retry-After``, a 429, or a 502.

Run it by hand (the kind end-to-end workflow does)::

    python tests/support/github_standin.py --root DIR --repo acme/gitops --token T --host 0.0.0.0 --port 8080
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

API = "/api/v3"
ZERO = "0" * 40


class HTTPError(Exception):
    def __init__(self, status: int, message: str, errors: list | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.errors, self.headers = status, message, errors, headers or {}

    def body(self) -> dict:
        doc: dict[str, Any] = {"message": self.message, "documentation_url": "https://docs.github.com/rest"}
        if self.errors:
            doc["errors"] = self.errors
        return doc


def not_found() -> HTTPError:
    return HTTPError(404, "Not Found")


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    body: dict
    headers: dict
    times: int


@dataclass
class Pull:
    number: int
    owner: str
    repo: str
    title: str
    body: str
    head: str
    base: str
    head_sha: str
    base_sha: str
    state: str = "open"
    merged: bool = False
    merge_commit_sha: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    closed_at: str | None = None
    merged_at: str | None = None
    labels: list[str] = field(default_factory=list)


class Repo:
    def __init__(self, git_dir: Path, owner: str, name: str):
        self.git_dir, self.owner, self.name = git_dir, owner, name
        self.lock = threading.RLock()

    def git(self, *args: str, input: bytes | None = None, env: dict | None = None, check: bool = True) -> str:
        full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
        for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            if env is None or var not in env:
                full_env.pop(var, None)
        res = subprocess.run(
            ["git", f"--git-dir={self.git_dir}", *args], input=input, capture_output=True, env=full_env, timeout=60
        )
        if check and res.returncode != 0:
            raise HTTPError(422, f"git {args[0]} failed: {res.stderr.decode(errors='replace').strip()}")
        return res.stdout.decode(errors="replace")

    def rev(self, ref: str, kind: str = "commit") -> str | None:
        out = self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{{kind}}}", check=False).strip()
        return out or None

    def resolve(self, ref: str | None, default_branch: str) -> str:
        ref = ref or default_branch
        for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
            sha = self.rev(candidate)
            if sha:
                return sha
        raise HTTPError(404, f"No commit found for the ref {ref}")

    def is_ancestor(self, a: str, b: str) -> bool:
        return (
            subprocess.run(
                ["git", f"--git-dir={self.git_dir}", "merge-base", "--is-ancestor", a, b], capture_output=True
            ).returncode
            == 0
        )


class GitHubStandIn:
    """The server; ``base_url`` is what PyGithub takes, ``git_url(repo)`` what git/Flux clones."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        tokens: set[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        public_host: str | None = None,
    ):
        self.root = Path(root)
        self.tokens = set(tokens or {"standin-token"})
        self.repos: dict[str, Repo] = {}
        self.pulls: dict[str, dict[int, Pull]] = {}
        self.faults: list[Fault] = []
        self.requests: list[tuple[float, str, str, int]] = []
        self.apps: dict[int, dict[str, Any]] = {}  # app id -> {"public_key": pem, "installations": {id: full_name}}
        self.lock = threading.RLock()
        handler = type("Handler", (_Handler,), {"standin": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.host = public_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self.thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + API

    def git_url(self, full_name: str) -> str:
        return f"{self.origin}/{full_name}.git"

    def start(self) -> GitHubStandIn:
        self.thread = threading.Thread(target=self.server.serve_forever, name="github-standin", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> GitHubStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- setup

    def add_repo(self, full_name: str, create: bool = True, default_branch: str = "main") -> Path:
        """Serve ``root/<owner>/<name>.git`` (created bare when missing)."""
        owner, name = full_name.split("/")
        git_dir = self.root / owner / f"{name}.git"
        if not git_dir.exists():
            if not create:
                raise FileNotFoundError(git_dir)
            git_dir.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "--quiet", "--bare", f"--initial-branch={default_branch}", str(git_dir)], check=True
            )
        self.repos[full_name] = Repo(git_dir, owner, name)
        self.pulls.setdefault(full_name, {})
        return git_dir

    def add_app(self, app_id: int, public_key_pem: str, installations: dict[int, str]) -> None:
        self.apps[app_id] = {"public_key": public_key_pem, "installations": installations}

    def inject(
        self, method: str, path: str, status: int, message: str = "", headers: dict | None = None, times: int = 1
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` and the ``path`` regex (searched in the path
        below /api/v3) with ``status`` instead of serving them."""
        body = {"message": message or f"injected {status}", "documentation_url": "https://docs.github.com/rest"}
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(path), status, body, dict(headers or {}), times))

    def calls(self, method: str | None = None, path: str | None = None) -> list[tuple[float, str, str, int]]:
        rx = re.compile(path) if path else None
        return [r for r in self.requests if (method is None or r[1] == method) and (rx is None or rx.search(r[2]))]

    def open_pulls(self, full_name: str) -> list[Pull]:
        return [p for p in self.pulls[full_name].values() if p.state == "open"]

    # -- JSON shapes

    def repo_json(self, r: Repo) -> dict:
        full = f"{r.owner}/{r.name}"
        return {
            "id": int(hashlib.sha1(full.encode()).hexdigest()[:8], 16),
            "name": r.name,
            "full_name": full,
            "owner": {"login": r.owner, "type": "Organization"},
            "private": True,
            "default_branch": "main",
            "url": f"{self.base_url}/repos/{full}",
            "html_url": f"{self.origin}/{full}",
            "clone_url": self.git_url(full),
        }

    def commit_json(self, r: Repo, sha: str, files: bool = False) -> dict:
        fmt = "%H%x00%P%x00%T%x00%an%x00%ae%x00%aI%x00%cn%x00%ce%x00%cI%x00%B"
        out = r.git("show", "-s", f"--format={fmt}", sha)
        h, parents, tree, an, ae, ad, cn, ce, cd, msg = out.split("\x00", 9)
        base = f"{self.base_url}/repos/{r.owner}/{r.name}"
        doc = {
            "sha": h,
            "url": f"{base}/commits/{h}",
            "html_url": f"{self.origin}/{r.owner}/{r.name}/commit/{h}",
            "commit": {
                "message": msg.rstrip("\n"),
                "author": {"name": an, "email": ae, "date": ad},
                "committer": {"name": cn, "email": ce, "date": cd},
                "tree": {"sha": tree, "url": f"{base}/git/trees/{tree}"},
                "url": f"{base}/git/commits/{h}",
            },
            "parents": [{"sha": p, "url": f"{base}/commits/{p}"} for p in parents.split()],
        }
        if files:
            first = parents.split()[0] if parents.split() else None
            doc["files"] = self.diff_files(r, first, h)
        return doc

    def git_commit_json(self, r: Repo, sha: str) -> dict:
        doc = self.commit_json(r, sha)["commit"]
        base = f"{self.base_url}/repos/{r.owner}/{r.name}"
        return {
            "sha": sha,
            "url": f"{base}/git/commits/{sha}",
            "message": doc["message"],
            "author": doc["author"],
            "committer": doc["committer"],
            "tree": doc["tree"],
            "parents": [
                {"sha": p["sha"], "url": f"{base}/git/commits/{p['sha']}"} for p in self.commit_json(r, sha)["parents"]
            ],
        }

    def diff_files(self, r: Repo, old: str | None, new: str) -> list[dict]:
        args = (
            ["diff-tree", "-r", "--no-renames", "--no-commit-id", old or "--root", new]
            if old
            else ["diff-tree", "-r", "--no-renames", "--root", "--no-commit-id", new]
        )
        files = []
        for line in r.git(*args).splitlines():
            meta, path = line.split("\t", 1)
            _, _, old_sha, new_sha, status = meta.split()
            status = {"A": "added", "D": "removed", "M": "modified"}.get(status[0], "modified")
            files.append(
                {
                    "filename": path,
                    "status": status,
                    "sha": new_sha if status != "removed" else old_sha,
                    "previous_sha": old_sha if status != "added" else None,
                }
            )
        return files

    def ref_json(self, r: Repo, ref: str, sha: str) -> dict:
        return {
            "ref": ref,
            "url": f"{self.base_url}/repos/{r.owner}/{r.name}/git/{ref}",
            "object": {
                "sha": sha,
                "type": "commit",
                "url": f"{self.base_url}/repos/{r.owner}/{r.name}/git/commits/{sha}",
            },
        }

    def pull_json(self, r: Repo, p: Pull) -> dict:
        full = f"{r.owner}/{r.name}"
        base = f"{self.base_url}/repos/{full}"
        head_sha = p.head_sha
        if p.state == "open":
            head_sha = r.rev(f"refs/heads/{p.head}") or p.head_sha
        return {
            "id": 100000 + p.number,
            "number": p.number,
            "url": f"{base}/pulls/{p.number}",
            "html_url": f"{self.origin}/{full}/pull/{p.number}",
            "issue_url": f"{base}/issues/{p.number}",
            "state": p.state,
            "title": p.title,
            "body": p.body,
            "user": {"login": "ct-pipeline"},
            "labels": [{"name": name} for name in p.labels],
            "head": {"ref": p.head, "sha": head_sha, "label": f"{r.owner}:{p.head}", "repo": self.repo_json(r)},
            "base": {
                "ref": p.base,
                "sha": r.rev(f"refs/heads/{p.base}") or p.base_sha,
                "label": f"{r.owner}:{p.base}",
                "repo": self.repo_json(r),
            },
            "merged": p.merged,
            "mergeable": None if p.merged else True,
            "merge_commit_sha": p.merge_commit_sha,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "closed_at": p.closed_at,
            "merged_at": p.merged_at,
        }


class _Handler(BaseHTTPRequestHandler):
    standin: GitHubStandIn
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, no 40 ms delayed-ACK stalls
    server_version = "GitHubStandIn/1.0"

    def log_message(self, format, *args):  # quiet
        pass

    # -- plumbing

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self, status: int) -> None:
        # Logged before the response goes out: once a client has its answer, tests can count the call.
        if not self._recorded:
            self._recorded = True
            with self.standin.lock:
                self.standin.requests.append(
                    (time.monotonic(), self.command, unquote(urlsplit(self.path).path), status)
                )

    def _send(self, status: int, doc: Any = None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (b"" if doc is None else json.dumps(doc).encode())
        self._record(status)
        self.send_response(status)
        if raw is None and doc is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-RateLimit-Limit", "5000")
        self.send_header("X-RateLimit-Remaining", "4999")
        self.send_header("X-RateLimit-Reset", str(int(time.time()) + 3600))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self) -> None:
        s = self.standin
        url = urlsplit(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        status = 500
        self._recorded = False
        try:
            if not path.startswith(API + "/"):
                status = self._git_http(path, url.query)
                return
            sub = path[len(API) :]
            with s.lock:
                fault = next((f for f in s.faults if f.method == self.command and f.path.search(sub)), None)
                if fault is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        s.faults.remove(fault)
            body = self._body()
            if fault is not None:
                status = fault.status
                self._send(status, fault.body, fault.headers)
                return
            payload = json.loads(body) if body else None
            status, doc, headers = self._route(sub, query, payload)
            self._send(status, doc, headers)
        except HTTPError as exc:
            status = exc.status
            self._send(exc.status, exc.body(), exc.headers)
        except Exception as exc:  # a bug in the stand-in: say so loudly
            status = 500
            self._send(500, {"message": f"stand-in error: {type(exc).__name__}: {exc}"})
            raise
        finally:
            self._record(status)  # calls answered without _send (git over HTTP)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle

    def _auth(self, app_jwt: bool = False) -> str:
        header = self.headers.get("Authorization", "")
        scheme, _, cred = header.partition(" ")
        if app_jwt:
            import jwt  # PyJWT (a PyGithub dependency)

            if scheme.lower() != "bearer":
                raise HTTPError(401, "A JSON web token could not be decoded")
            try:
                claims = jwt.decode(cred, options={"verify_signature": False})
                app = self.standin.apps[int(claims["iss"])]
                jwt.decode(cred, app["public_key"], algorithms=["RS256"])
            except Exception as exc:
                raise HTTPError(401, f"A JSON web token could not be decoded ({exc})") from None
            return str(claims["iss"])
        if scheme.lower() in ("token", "bearer") and cred in self.standin.tokens:
            return cred
        if scheme.lower() == "basic":
            user, _, pw = base64.b64decode(cred).decode().partition(":")
            if pw in self.standin.tokens or user in self.standin.tokens:
                return pw or user
        raise HTTPError(401, "Bad credentials")

    # -- git smart HTTP (clone/fetch anonymous, push with a token as password)

    def _git_http(self, path: str, query: str) -> int:
        s = self.standin
        m = re.match(r"^/([^/]+)/([^/]+?)(?:\.git)?(/(?:info/refs|git-upload-pack|git-receive-pack|HEAD))$", path)
        if not m or f"{m.group(1)}/{m.group(2)}" not in s.repos:
            self._send(404, raw=b"not found\n")
            return 404
        repo = s.repos[f"{m.group(1)}/{m.group(2)}"]
        env = {
            **os.environ,
            "GIT_PROJECT_ROOT": str(repo.git_dir.parent),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{repo.git_dir.name}{m.group(3)}",
            "REQUEST_METHOD": self.command,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
        }
        if "receive-pack" in path or "receive-pack" in query:
            try:
                env["REMOTE_USER"] = self._auth()
            except HTTPError:
                self._send(401, raw=b"authentication required\n", headers={"WWW-Authenticate": 'Basic realm="git"'})
                return 401
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        body = self._body()
        if env.get("HTTP_CONTENT_ENCODING") == "gzip":
            body, env["HTTP_CONTENT_ENCODING"] = gzip.decompress(body), ""
        env["CONTENT_LENGTH"] = str(len(body))
        with repo.lock:
            res = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, timeout=120)
        head, _, out = res.stdout.partition(b"\r\n\r\n")
        status, headers = 200, {}
        for line in head.decode(errors="replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key] = value.strip()
        self._send(status, headers=headers, raw=out)
        return status

    # -- REST

    def _route(self, sub: str, q: dict, body: Any) -> tuple[int, Any, dict | None]:
        s = self.standin
        m = re.match(r"^/app/installations/(\d+)/access_tokens$", sub)
        if m and self.command == "POST":
            app_id = int(self._auth(app_jwt=True))
            inst = int(m.group(1))
            if inst not in s.apps[app_id]["installations"]:
                raise not_found()
            token = "ghs_" + hashlib.sha256(f"{app_id}:{inst}:{time.time()}".encode()).hexdigest()[:36]
            s.tokens.add(token)
            expires = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return 201, {"token": token, "expires_at": expires, "permissions": {"contents": "write"}}, None
        m = re.match(r"^/repos/([^/]+)/([^/]+)/installation$", sub)
        if m:
            app_id = int(self._auth(app_jwt=True))
            for inst, full in s.apps[app_id]["installations"].items():
                if full == f"{m.group(1)}/{m.group(2)}":
                    return 200, {"id": inst, "app_id": app_id, "account": {"login": m.group(1)}}, None
            raise not_found()

        self._auth()
        m = re.match(r"^/repos/([^/]+)/([^/]+)(/.*)?$", sub)
        if not m or f"{m.group(1)}/{m.group(2)}" not in s.repos:
            raise not_found()
        full = f"{m.group(1)}/{m.group(2)}"
        r = s.repos[full]
        rest = m.group(3) or ""
        with r.lock:
            return self._repo_route(r, full, rest, q, body)

    def _repo_route(self, r: Repo, full: str, rest: str, q: dict, body: Any) -> tuple[int, Any, dict | None]:
        s, cmd = self.standin, self.command
        base = f"{s.base_url}/repos/{full}"
        if rest == "" and cmd == "GET":
            return 200, s.repo_json(r), None
        # branches
        m = re.match(r"^/branches/(.+)$", rest)
        if m and cmd == "GET":
            sha = r.rev(f"refs/heads/{m.group(1)}") or _raise(HTTPError(404, "Branch not found"))
            return 200, {"name": m.group(1), "commit": s.commit_json(r, sha), "protected": False}, None
        # refs
        m = re.match(r"^/git/(?:ref|refs)/(.+)$", rest)
        if m and cmd == "GET":
            ref = "refs/" + m.group(1)
            sha = r.rev(ref) or _raise(not_found())
            return 200, s.ref_json(r, ref, sha), None
        m = re.match(r"^/git/matching-refs/(.*)$", rest)
        if m and cmd == "GET":
            prefix = "refs/" + m.group(1)
            out = r.git(
                "for-each-ref",
                "--format=%(refname) %(objectname)",
                prefix.rsplit("/", 1)[0] if not prefix.endswith("/") else prefix,
            )
            refs = [line.split() for line in out.splitlines()]
            docs = [s.ref_json(r, ref, sha) for ref, sha in refs if ref.startswith(prefix)]
            return self._page(docs, q)
        if rest == "/git/refs" and cmd == "POST":
            ref, sha = body["ref"], body["sha"]
            if not ref.startswith("refs/") or ref.count("/") < 2:
                raise HTTPError(422, "Reference name is invalid")
            if r.rev(sha) is None:
                raise HTTPError(422, "Object does not exist")
            if r.rev(ref):
                raise HTTPError(422, "Reference already exists")
            r.git("update-ref", ref, sha, ZERO)
            return 201, s.ref_json(r, ref, sha), None
        m = re.match(r"^/git/refs/(.+)$", rest)
        if m and cmd == "PATCH":
            ref, sha = "refs/" + m.group(1), body["sha"]
            old = r.rev(ref) or _raise(HTTPError(422, "Reference does not exist"))
            if r.rev(sha) is None:
                raise HTTPError(422, "Object does not exist")
            if not body.get("force") and not r.is_ancestor(old, sha):
                raise HTTPError(422, "Update is not a fast forward")
            r.git("update-ref", ref, sha, old)
            return 200, s.ref_json(r, ref, sha), None
        if m and cmd == "DELETE":
            ref = "refs/" + m.group(1)
            old = r.rev(ref) or _raise(HTTPError(422, "Reference does not exist"))
            r.git("update-ref", "-d", ref, old)
            return 204, None, None
        # blobs
        if rest == "/git/blobs" and cmd == "POST":
            data = base64.b64decode(body["content"]) if body.get("encoding") == "base64" else body["content"].encode()
            sha = r.git("hash-object", "-w", "--stdin", input=data).strip()
            return 201, {"sha": sha, "url": f"{base}/git/blobs/{sha}"}, None
        m = re.match(r"^/git/blobs/([0-9a-f]{40})$", rest)
        if m and cmd == "GET":
            if r.rev(m.group(1), "blob") is None:
                raise not_found()
            data = subprocess.run(
                ["git", f"--git-dir={r.git_dir}", "cat-file", "blob", m.group(1)], capture_output=True, check=True
            ).stdout
            return (
                200,
                {
                    "sha": m.group(1),
                    "size": len(data),
                    "encoding": "base64",
                    "content": base64.b64encode(data).decode(),
                    "url": f"{base}/git/blobs/{m.group(1)}",
                },
                None,
            )
        # trees
        if rest == "/git/trees" and cmd == "POST":
            return 201, self._create_tree(r, body, base), None
        m = re.match(r"^/git/trees/([0-9a-f]{40})$", rest)
        if m and cmd == "GET":
            sha = r.rev(m.group(1), "tree") or _raise(not_found())
            return 200, self._tree_json(r, sha, base, recursive="recursive" in q), None
        # commits (git data)
        if rest == "/git/commits" and cmd == "POST":
            if r.rev(body["tree"], "tree") is None:
                raise HTTPError(422, "Tree SHA does not exist")
            parents = []
            for p in body.get("parents", []):
                parents += ["-p", r.rev(p) or _raise(HTTPError(422, "Parent SHA does not exist or is not a commit"))]
            author = body.get("author") or {"name": "GitHub Stand-in", "email": "standin@localhost"}
            committer = body.get("committer") or author
            env = {
                "GIT_AUTHOR_NAME": author["name"],
                "GIT_AUTHOR_EMAIL": author["email"],
                "GIT_COMMITTER_NAME": committer["name"],
                "GIT_COMMITTER_EMAIL": committer["email"],
            }
            sha = r.git(
                "commit-tree", body["tree"], *parents, "-F", "-", input=body["message"].encode(), env=env
            ).strip()
            return 201, s.git_commit_json(r, sha), None
        m = re.match(r"^/git/commits/([0-9a-f]{40})$", rest)
        if m and cmd == "GET":
            sha = r.rev(m.group(1)) or _raise(not_found())
            return 200, s.git_commit_json(r, sha), None
        # commits (repo)
        if rest == "/commits" and cmd == "GET":
            start = r.resolve((q.get("sha") or [None])[0], "main")
            per_page = min(int((q.get("per_page") or ["30"])[0]), 100)
            page = int((q.get("page") or ["1"])[0])
            shas = r.git("rev-list", f"--max-count={per_page}", f"--skip={(page - 1) * per_page}", start).split()
            more = bool(r.git("rev-list", "--max-count=1", f"--skip={page * per_page}", start).strip())
            docs = [s.commit_json(r, sha) for sha in shas]
            return 200, docs, self._link(page, per_page, more, q)
        m = re.match(r"^/commits/(.+)$", rest)
        if m and cmd == "GET":
            return 200, s.commit_json(r, r.resolve(m.group(1), "main"), files=True), None
        m = re.match(r"^/compare/(.+?)\.\.\.(.+)$", rest)
        if m and cmd == "GET":
            b, h = r.resolve(m.group(1), "main"), r.resolve(m.group(2), "main")
            mb = r.git("merge-base", b, h, check=False).strip()
            ahead = int(r.git("rev-list", "--count", f"{b}..{h}"))
            behind = int(r.git("rev-list", "--count", f"{h}..{b}"))
            status = "identical" if b == h else "ahead" if not behind else "behind" if not ahead else "diverged"
            return (
                200,
                {
                    "status": status,
                    "ahead_by": ahead,
                    "behind_by": behind,
                    "total_commits": ahead,
                    "merge_base_commit": s.commit_json(r, mb) if mb else None,
                    "commits": [s.commit_json(r, c) for c in r.git("rev-list", "--reverse", f"{b}..{h}").split()],
                    "files": s.diff_files(r, mb or None, h),
                    "url": f"{base}/compare/{b}...{h}",
                },
                None,
            )
        # contents
        m = re.match(r"^/contents/(.*)$", rest)
        if m and cmd == "GET":
            return 200, self._contents(r, m.group(1).strip("/"), (q.get("ref") or [None])[0], base), None
        # pulls
        if rest == "/pulls" and cmd == "POST":
            return 201, s.pull_json(r, self._create_pull(r, full, body)), None
        if rest == "/pulls" and cmd == "GET":
            state = (q.get("state") or ["open"])[0]
            head = (q.get("head") or [None])[0]
            base_ref = (q.get("base") or [None])[0]
            pulls = sorted(s.pulls[full].values(), key=lambda p: p.number, reverse=True)
            if (q.get("direction") or ["desc"])[0] == "asc":
                pulls.reverse()
            pulls = [p for p in pulls if state == "all" or p.state == state]
            if head:
                owner, _, branch = head.partition(":")
                pulls = [p for p in pulls if p.head == branch and owner == r.owner]
            if base_ref:
                pulls = [p for p in pulls if p.base == base_ref]
            return self._page([s.pull_json(r, p) for p in pulls], q)
        m = re.match(r"^/pulls/(\d+)(/merge)?$", rest)
        if m:
            pull = s.pulls[full].get(int(m.group(1))) or _raise(not_found())
            if m.group(2) and cmd == "PUT":
                return 200, self._merge(r, pull, body or {}), None
            if m.group(2) and cmd == "GET":
                return (204 if pull.merged else 404), None, None
            if cmd == "GET":
                return 200, s.pull_json(r, pull), None
            if cmd == "PATCH":
                return 200, s.pull_json(r, self._update_pull(r, pull, body)), None
        m = re.match(r"^/issues/(\d+)/labels$", rest)
        if m:
            pull = s.pulls[full].get(int(m.group(1))) or _raise(not_found())
            if cmd in ("POST", "PUT"):
                items = body.get("labels", []) if isinstance(body, dict) else body
                names = [x if isinstance(x, str) else x["name"] for x in items]
                pull.labels = list(dict.fromkeys((pull.labels if cmd == "POST" else []) + names))
            return 200, [{"name": n, "url": f"{base}/labels/{n}"} for n in pull.labels], None
        raise not_found()

    def _page(self, docs: list, q: dict) -> tuple[int, list, dict]:
        per_page = min(int((q.get("per_page") or ["30"])[0]), 100)
        page = int((q.get("page") or ["1"])[0])
        chunk = docs[(page - 1) * per_page : page * per_page]
        return 200, chunk, self._link(page, per_page, len(docs) > page * per_page, q)

    def _link(self, page: int, per_page: int, more: bool, q: dict) -> dict:
        if not more:
            return {}
        params = {k: v[0] for k, v in q.items()}
        params.update(page=str(page + 1), per_page=str(per_page))
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return {"Link": f'<{self.standin.origin}{urlsplit(self.path).path}?{query}>; rel="next"'}

    def _tree_json(self, r: Repo, sha: str, base: str, recursive: bool = False) -> dict:
        args = ["ls-tree", "-l", *(["-r", "-t"] if recursive else []), sha]
        entries = []
        for line in r.git(*args).splitlines():
            meta, path = line.split("\t", 1)
            mode, kind, obj, size = meta.split()
            entry = {"path": path, "mode": mode, "type": kind, "sha": obj, "url": f"{base}/git/{kind}s/{obj}"}
            if kind == "blob":
                entry["size"] = int(size)
            entries.append(entry)
        return {"sha": sha, "url": f"{base}/git/trees/{sha}", "tree": entries, "truncated": False}

    def _create_tree(self, r: Repo, body: dict, base: str) -> dict:
        with tempfile.TemporaryDirectory(prefix="standin-index-") as tmp:
            (Path(tmp) / "wt").mkdir()
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": str(Path(tmp) / "wt")}
            base_tree = body.get("base_tree")
            if base_tree:
                if r.rev(base_tree, "tree") is None:
                    raise HTTPError(422, "base_tree is not a valid tree oid")
                r.git("read-tree", base_tree, env=env)
            else:
                r.git("read-tree", "--empty", env=env)
            for entry in body["tree"]:
                path, mode = entry["path"], entry.get("mode", "100644")
                if entry.get("type", "blob") != "blob" or mode not in ("100644", "100755", "120000"):
                    raise HTTPError(422, f"tree entry {path}: only blobs are supported by the stand-in")
                if "sha" in entry and entry["sha"] is None:
                    r.git("update-index", "--force-remove", "--", path, env=env)
                    continue
                sha = entry.get("sha")
                if sha is None:
                    sha = r.git("hash-object", "-w", "--stdin", input=entry["content"].encode()).strip()
                elif r.rev(sha, "blob") is None:
                    raise HTTPError(422, f"tree.sha {sha} is not a valid blob")
                r.git("update-index", "--add", "--cacheinfo", f"{mode},{sha},{path}", env=env)
            sha = r.git("write-tree", env=env).strip()
        return self._tree_json(r, sha, base)

    def _contents(self, r: Repo, path: str, ref: str | None, base: str) -> Any:
        commit = r.resolve(ref, "main")
        spec = f"{commit}:{path}" if path else f"{commit}^{{tree}}"
        kind = r.git("cat-file", "-t", spec, check=False).strip()
        if kind == "blob":
            data = subprocess.run(
                ["git", f"--git-dir={r.git_dir}", "cat-file", "blob", spec], capture_output=True, check=True
            ).stdout
            sha = r.git("rev-parse", spec).strip()
            return {
                "type": "file",
                "encoding": "base64",
                "size": len(data),
                "name": path.rsplit("/", 1)[-1],
                "path": path,
                "sha": sha,
                "content": base64.encodebytes(data).decode(),
                "url": f"{base}/contents/{path}?ref={commit}",
                "git_url": f"{base}/git/blobs/{sha}",
            }
        if kind == "tree":
            out = []
            for entry in self._tree_json(r, r.git("rev-parse", spec).strip(), base)["tree"]:
                full = f"{path}/{entry['path']}" if path else entry["path"]
                out.append(
                    {
                        "type": "dir" if entry["type"] == "tree" else "file",
                        "name": entry["path"],
                        "path": full,
                        "sha": entry["sha"],
                        "url": f"{base}/contents/{full}?ref={commit}",
                    }
                )
            return out
        raise not_found()

    def _create_pull(self, r: Repo, full: str, body: dict) -> Pull:
        s = self.standin
        head = body["head"].split(":", 1)[-1]
        base = body["base"]
        head_sha = r.rev(f"refs/heads/{head}")
        base_sha = r.rev(f"refs/heads/{base}")
        if head_sha is None or base_sha is None:
            field_name = "head" if head_sha is None else "base"
            raise HTTPError(
                422, "Validation Failed", [{"resource": "PullRequest", "field": field_name, "code": "invalid"}]
            )
        if any(p.head == head and p.base == base for p in s.open_pulls(full)):
            raise HTTPError(
                422,
                "Validation Failed",
                [
                    {
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": f"A pull request already exists for {r.owner}:{head}.",
                    }
                ],
            )
        if r.is_ancestor(head_sha, base_sha):
            raise HTTPError(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"}],
            )
        number = max([0, *s.pulls[full]]) + 1
        pull = Pull(
            number, r.owner, r.name, body.get("title") or head, body.get("body") or "", head, base, head_sha, base_sha
        )
        s.pulls[full][number] = pull
        return pull

    def _update_pull(self, r: Repo, pull: Pull, body: dict) -> Pull:
        if "title" in body:
            pull.title = body["title"]
        if "body" in body:
            pull.body = body["body"]
        state = body.get("state")
        if state == "closed" and pull.state == "open":
            pull.head_sha = r.rev(f"refs/heads/{pull.head}") or pull.head_sha
            pull.state, pull.closed_at = "closed", now_iso()
        elif state == "open" and pull.state == "closed":
            if pull.merged:
                raise HTTPError(
                    422,
                    "Validation Failed",
                    [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": "state cannot be changed. The pull request is merged.",
                        }
                    ],
                )
            tip = r.rev(f"refs/heads/{pull.head}")
            if tip is None:
                raise HTTPError(
                    422,
                    "Validation Failed",
                    [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"state cannot be changed. The {pull.head} branch has been deleted.",
                        }
                    ],
                )
            if not r.is_ancestor(pull.head_sha, tip):
                raise HTTPError(
                    422,
                    "Validation Failed",
                    [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"state cannot be changed. The {pull.head} branch has been "
                            "force-pushed or recreated.",
                        }
                    ],
                )
            pull.state, pull.closed_at = "open", None
        pull.updated_at = now_iso()
        return pull

    def _merge(self, r: Repo, pull: Pull, body: dict) -> dict:
        if pull.merged:
            raise HTTPError(405, "Pull Request is not mergeable")
        if pull.state != "open":
            raise HTTPError(422, "Pull Request is not open")
        method = body.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            raise HTTPError(422, f"Invalid merge_method {method!r}")
        head = r.rev(f"refs/heads/{pull.head}") or _raise(HTTPError(422, "Head branch does not exist"))
        if body.get("sha") and body["sha"] != head:
            raise HTTPError(409, "Head branch was modified. Review and try the merge again.")
        base = r.rev(f"refs/heads/{pull.base}")
        env = {
            "GIT_AUTHOR_NAME": "GitHub Stand-in",
            "GIT_AUTHOR_EMAIL": "noreply@localhost",
            "GIT_COMMITTER_NAME": "GitHub",
            "GIT_COMMITTER_EMAIL": "noreply@localhost",
        }
        if method == "rebase":
            sha = self._rebase(r, base, head, env)
        else:
            res = subprocess.run(
                ["git", f"--git-dir={r.git_dir}", "merge-tree", "--write-tree", base, head],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise HTTPError(405, "Pull Request is not mergeable")
            tree = res.stdout.split()[0]
            if method == "merge":
                title = body.get("commit_title") or f"Merge pull request #{pull.number} from {r.owner}/{pull.head}"
                message = body.get("commit_message", pull.title)
                parents = ["-p", base, "-p", head]
            else:  # squash: one commit, one parent; by default the PR title (#n) and every commit's message
                title = body.get("commit_title") or f"{pull.title} (#{pull.number})"
                message = body.get("commit_message")
                if message is None:
                    shas = r.git("rev-list", "--reverse", f"{base}..{head}").split()
                    message = "\n\n".join("* " + r.git("show", "-s", "--format=%B", c).strip() for c in shas)
                parents = ["-p", base]
            sha = r.git(
                "commit-tree",
                tree,
                *parents,
                "-F",
                "-",
                input=f"{title}\n\n{message}".rstrip().encode() + b"\n",
                env=env,
            ).strip()
        r.git("update-ref", f"refs/heads/{pull.base}", sha, base)
        pull.head_sha, pull.merged, pull.merge_commit_sha = head, True, sha
        pull.state, pull.merged_at, pull.closed_at = "closed", now_iso(), now_iso()
        return {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def _rebase(self, r: Repo, base: str, head: str, env: dict) -> str:
        """GitHub's "rebase and merge": each commit of the pull request re-created on top of the base (one parent
        each, the author kept, GitHub the committer); returns the last one."""
        current = base
        with tempfile.TemporaryDirectory(prefix="standin-rebase-") as tmp:
            index_env = {"GIT_INDEX_FILE": str(Path(tmp) / "index"), "GIT_WORK_TREE": tmp}
            for commit in r.git("rev-list", "--reverse", "--no-merges", f"{base}..{head}").split():
                r.git("read-tree", current, env=index_env)
                patch = subprocess.run(
                    ["git", f"--git-dir={r.git_dir}", "diff", "--binary", "--full-index", f"{commit}^", commit],
                    capture_output=True,
                    check=True,
                ).stdout
                applied = subprocess.run(
                    ["git", f"--git-dir={r.git_dir}", "apply", "--cached", "-"],
                    input=patch,
                    capture_output=True,
                    env={**os.environ, **index_env},
                )
                if applied.returncode != 0:
                    raise HTTPError(405, "Pull Request is not mergeable (rebase conflicts)")
                tree = r.git("write-tree", env=index_env).strip()
                an, ae, ad, message = r.git("show", "-s", "--format=%an%x00%ae%x00%aI%x00%B", commit).split("\x00", 3)
                author = {"GIT_AUTHOR_NAME": an, "GIT_AUTHOR_EMAIL": ae, "GIT_AUTHOR_DATE": ad}
                current = r.git(
                    "commit-tree", tree, "-p", current, "-F", "-", input=message.encode(), env={**env, **author}
                ).strip()
        return current


def _raise(exc: Exception):
    raise exc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="directory holding <owner>/<name>.git")
    ap.add_argument("--repo", action="append", required=True, help="owner/name to serve (created bare if missing)")
    ap.add_argument("--token", action="append", default=[], help="accepted token (repeatable)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--public-host", default=None, help="host name to put into URLs (default: --host)")
    args = ap.parse_args(argv)
    standin = GitHubStandIn(args.root, set(args.token) or None, args.host, args.port, args.public_host)
    for full in args.repo:
        standin.add_repo(full)
    print(f"GitHub stand-in: API {standin.base_url}, git {standin.git_url(args.repo[0])}", flush=True)
    try:
        standin.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
