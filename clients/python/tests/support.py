"""Real processes for the tests: ``keygate serve`` and its CLI, gunicorn, uvicorn.

Every wait has a deadline; nothing sleeps a fixed time. Child processes get their output read
by threads (no pipe can fill up and stall them) and are stopped with SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent
REPO_ROOT = PACKAGE_ROOT.parent.parent

#: A keygate key alone on a line: how `keygate serve` prints the bootstrap admin key.
KEY_LINE = re.compile(r"^([a-z][a-z0-9_]*_[0-9A-Za-z]{38})$", re.M)
LISTENING = re.compile(r"listening addr=(127\.0\.0\.1:\d+)")

#: The refusals a presented key can get, each with the code keygate gives it.
REFUSALS = {
    "malformed": "MALFORMED",
    "unknown": "NOT_FOUND",
    "revoked": "REVOKED",
    "expired": "EXPIRED",
    "disabled": "DISABLED",
}

#: keygate settings a developer's shell may hold; the tests say everything on the command line.
_KEYGATE_ENV = (
    "KEYGATE_DATABASE",
    "KEYGATE_LISTEN",
    "KEYGATE_PREFIX",
    "KEYGATE_CONFIG",
    "KEYGATE_LOG_FORMAT",
    "KEYGATE_LOG_LEVEL",
    "KEYGATE_CACHE_TTL",
    "KEYGATE_CACHE_SIZE",
)


def keygate_binary() -> Path:
    """The `keygate` binary: ``KEYGATE_BIN``, else the workspace's debug build. Not built here."""
    path = Path(os.environ.get("KEYGATE_BIN", REPO_ROOT / "target" / "debug" / "keygate"))
    if not path.is_file():
        raise RuntimeError(
            f"no keygate binary at {path}: run `cargo build -p keygate-server` or set KEYGATE_BIN"
        )
    return path


def keygate_cli(database: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``keygate --database DATABASE ARGS``, its output captured (a generous timeout: an
    import checks PBKDF2 hashes, slow by design)."""
    return subprocess.run(
        [str(keygate_binary()), "--database", database, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(),
    )


def clean_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """This process's environment without keygate's own settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _KEYGATE_ENV}
    env.update(extra or {})
    return env


class Process:
    """A child process with its stdout and stderr collected as they come."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[Path] = None,
        pass_fds: Iterable[int] = (),
    ) -> None:
        self.args = list(args)
        self._popen = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
        )
        self._text = {"stdout": "", "stderr": ""}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._popen.pid

    def _read(self, name: str, stream: Any) -> None:
        for line in iter(stream.readline, b""):
            with self._changed:
                self._text[name] += line.decode("utf-8", "replace")
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def stdout(self) -> str:
        with self._changed:
            return self._text["stdout"]

    def stderr(self) -> str:
        with self._changed:
            return self._text["stderr"]

    def wait_for(
        self, pattern: "re.Pattern[str]", stream: str = "stderr", timeout: float = 30.0
    ) -> "re.Match[str]":
        """The first match of ``pattern`` in the stream, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = pattern.search(self._text[stream])
                if found:
                    return found
                remaining = deadline - time.monotonic()
                exited = self._popen.poll() is not None and not any(r.is_alive() for r in self._readers)
                if remaining <= 0 or exited:
                    raise AssertionError(
                        f"{self.args[0]} never printed {pattern.pattern!r} on {stream} "
                        f"({'exited ' + str(self._popen.returncode) if exited else 'timed out'}):\n"
                        f"--- stdout\n{self._text['stdout']}\n--- stderr\n{self._text['stderr']}"
                    )
                self._changed.wait(min(remaining, 0.5))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return self._popen.returncode


def listening_socket() -> socket.socket:
    """A socket listening on 127.0.0.1 at a port the OS chose, to hand to a server by fd (no
    race for a free port). The caller closes it once the server has it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def refused_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Reply:
    """An HTTP answer: status, headers (lower-case names) and body."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:500]!r})"


def http(
    method: str,
    url: str,
    *,
    headers: Optional[Mapping[str, str]] = None,
    body: Any = None,
    timeout: float = 20.0,
) -> Reply:
    """One request with the standard library (the tests check servers with a client that is
    not the one under test). ``body`` is sent as JSON when given."""
    data = None
    all_headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())


def with_key(key: str) -> Dict[str, str]:
    """The header that presents ``key``."""
    return {"Authorization": f"Api-Key {key}"}


def wait_until(condition: Any, what: str, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Polls ``condition()`` until it returns something true, for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Keygate:
    """A running ``keygate serve`` on a database, with its CLI on the same database."""

    def __init__(
        self,
        workdir: Path,
        database: Optional[str] = None,
        *,
        args: Sequence[str] = (),
        bootstrap: bool = True,
    ) -> None:
        """Starts the server. ``bootstrap``: the database is empty, so the server prints its
        bootstrap admin key (kept as ``admin_key``)."""
        self.binary = keygate_binary()
        self.workdir = workdir
        self.database = database or f"sqlite://{workdir / 'keygate.db'}"
        self.process = Process(
            [
                str(self.binary),
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                self.database,
                "--log-level",
                "debug",
                *args,
            ],
            env=clean_env(),
        )
        self.addr = self.process.wait_for(LISTENING).group(1)
        self.url = f"http://{self.addr}"
        self.admin_key = (
            self.process.wait_for(KEY_LINE, stream="stdout", timeout=5).group(1) if bootstrap else ""
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``keygate --database <this database> ARGS``."""
        done = keygate_cli(self.database, *args)
        if check and done.returncode != 0:
            raise AssertionError(f"keygate {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    def create_key(
        self,
        name: str,
        scopes: Sequence[str] = (),
        *,
        owner: Optional[str] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        expires_at: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Issues a key with the CLI; returns its JSON (``key`` is the plaintext)."""
        args = ["keys", "create", "--name", name, "--json"]
        for scope in scopes:
            args += ["--scope", scope]
        if owner is not None:
            args += ["--owner", owner]
        if metadata is not None:
            args += ["--metadata", json.dumps(metadata)]
        if expires_at is not None:
            args += ["--expires-at", expires_at]
        return json.loads(self.cli(*args).stdout)

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        """A request to keygate's own API with the bootstrap admin key."""
        return http(
            method, self.url + path, headers={"Authorization": f"Api-Key {self.admin_key}"}, body=body
        )

    def verifications(self) -> int:
        """Verifications keygate has made (``/metrics``). Each ``POST /v1/verify`` adds two
        (the verify key and the key asked about); reading this adds none."""
        text = http("GET", self.url + "/metrics").body.decode()
        return sum(
            int(n) for n in re.findall(r'^keygate_verifications_total\{code="[A-Z_]+"\} (\d+)$', text, re.M)
        )

    def logs(self) -> str:
        return self.process.stderr()

    def stop(self) -> int:
        return self.process.stop()


class AppServer:
    """A WSGI/ASGI app served by a real server process on a socket bound here (port 0, handed
    over by file descriptor): gunicorn for Django, uvicorn for FastAPI."""

    def __init__(self, kind: str, app: str, env: Mapping[str, str], *, workers: int = 1) -> None:
        sock = listening_socket()
        fd = sock.fileno()
        if kind == "gunicorn":
            args = [
                "-m",
                "gunicorn",
                "--bind",
                f"fd://{fd}",
                "--workers",
                str(workers),
                "--worker-class",
                "sync",
                "--timeout",
                "30",
                "--access-logfile",
                "-",
                app,
            ]
            ready = re.compile(r"Booting worker")
        elif kind == "uvicorn":
            args = ["-m", "uvicorn", "--fd", str(fd), "--workers", str(workers), app]
            ready = re.compile(r"Application startup complete")
        else:
            raise ValueError(kind)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.process = Process(
            [sys.executable, *args], env=clean_env({"PYTHONPATH": str(HERE), **env}), cwd=HERE, pass_fds=[fd]
        )
        sock.close()  # the server holds its own copy
        try:
            self.process.wait_for(ready)
        except AssertionError:
            self.process.stop()
            raise

    def get(self, path: str, headers: Optional[Mapping[str, str]] = None) -> Reply:
        return http("GET", self.url + path, headers=headers)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        """Waits until the server has written ``text`` (a traceback may follow the response)
        and returns everything it wrote."""
        wait_until(lambda: text in self.logs(), f"{text!r} in the server's log", timeout)
        return self.logs()

    def logs(self) -> str:
        """Everything the server wrote (access log, errors, the app's log lines)."""
        return self.process.stdout() + self.process.stderr()

    def stop(self) -> int:
        return self.process.stop()
