"""Grading kernels forked from a warm process, so each submission skips Python's and torch's start-up.

nbgrader executes every submission in a fresh Jupyter kernel, and a fresh kernel that imports torch spends
about 2.5 s of a 2-core machine before the first cell runs. Here one *zygote* process imports the heavy
modules once and waits on a Unix socket. The kernel command of the ``mmcourse-grader`` kernelspec is a small
*client*: it sends its arguments, working directory, environment and standard streams to the zygote, which
forks; the child becomes an ordinary ipykernel on the client's connection file. Each submission still gets
its own process with a clean copy of the warm state (copy-on-write), so submissions cannot see each other.

Data flow of one kernel start::

    jupyter_client --spawn--> client --(argv, cwd, env, fds 0/1/2)--> zygote --fork--> child: IPKernelApp
         ^   signals (SIGINT on a cell timeout)  |  forwarded to the child's pid                 |
         +------------- zmq: the kernel protocol, as with any kernel ---------------------------+

The client lives as long as the child and exits with its status, so jupyter_client's process handling
(interrupt, shutdown, kill) works unchanged; if the client dies, the child sees its socket close and exits.
Without a zygote (no socket) the client ``exec``s a plain ipykernel: slower, never broken.

The zygote must stay single-threaded apart from the BLAS pool numpy starts (whose fork handlers re-create
it): it imports modules but runs no torch operation, so no OpenMP pool exists when it forks.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

KERNEL_NAME = "mmcourse-grader"
SOCKET_ENV = "MMCOURSE_GRADER_SOCKET"
DEFAULT_PRELOAD = ("numpy", "torch", "mmcourse.data", "mmcourse.losses", "mmcourse.fusion",
                   "ipykernel.kernelapp")
_HEADER = struct.Struct("!I")   # length prefix of a request


def _send_message(conn: socket.socket, payload: bytes, fds=()) -> None:
    data = _HEADER.pack(len(payload)) + payload
    if fds:
        socket.send_fds(conn, [data], list(fds))
    else:
        conn.sendall(data)


def _recv_exact(conn: socket.socket, n: int, chunks: list[bytes]) -> bytes:
    got = b"".join(chunks)
    while len(got) < n:
        more = conn.recv(n - len(got))
        if not more:
            raise ConnectionError("the peer closed the socket mid-message")
        got += more
    return got


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = _HEADER.unpack(_recv_exact(conn, _HEADER.size, [data[:_HEADER.size]]))[0]
    body = _recv_exact(conn, size, [data[_HEADER.size:]])
    return json.loads(body), fds


# ----------------------------------------------------------------------------------------------- the zygote
def _child(conn: socket.socket, listener: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become the client's kernel, report its pid and exit status on ``conn``."""
    listener.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setsid()                                   # signals to the zygote's group never reach a kernel
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [sys.executable, *request["argv"]]
    conn.sendall(f"{os.getpid()}\n".encode())

    def watch_client() -> None:                   # the client died (killed): no one owns this kernel
        try:
            conn.recv(1)
        except OSError:
            pass
        os._exit(1)

    threading.Thread(target=watch_client, daemon=True).start()
    code = 0
    try:
        from ipykernel.kernelapp import IPKernelApp
        # parent_handle 1: no parent poller (the zygote is the parent; watch_client does that job), no banner
        IPKernelApp.launch_instance(argv=[*request["argv"], "--IPKernelApp.parent_handle=1"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:                         # noqa: BLE001 - report any failure as an exit status
        import traceback
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        conn.sendall(f"{code}\n".encode())
    finally:
        os._exit(code)


def serve(path: str | Path, preload=DEFAULT_PRELOAD, ready=None, poll_s: float = 1.0) -> None:
    """Import ``preload``, listen on the Unix socket ``path`` and fork one kernel per request.

    Serves until its parent (the grader) exits, even one killed without a chance to stop it: every ``poll_s``
    seconds without a request it checks that its parent is still the one that started it.
    """
    parent = os.getppid()
    for name in preload:
        importlib.import_module(name)
    path = Path(path)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(poll_s)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)   # children are reaped by the kernel: no zombies
    if ready is not None:
        ready()
    while os.getppid() == parent:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(None)
        try:
            request, fds = _recv_request(conn)
        except (ConnectionError, ValueError, OSError):
            conn.close()
            continue
        if os.fork() == 0:
            _child(conn, listener, request, fds)
        for fd in fds:
            os.close(fd)
        conn.close()
    listener.close()
    path.unlink(missing_ok=True)


class Zygote:
    """The zygote as a context manager: started in a subprocess, its socket exported in ``SOCKET_ENV``."""

    def __init__(self, path: str | Path, preload=DEFAULT_PRELOAD, start_timeout: float = 120.0):
        self.path, self.preload, self.start_timeout = Path(path), tuple(preload), start_timeout
        self.process: subprocess.Popen | None = None
        self._previous: str | None = None

    def __enter__(self) -> "Zygote":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "serve", str(self.path), "--preload",
             ",".join(self.preload)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.process.kill()
            raise RuntimeError(f"the grading zygote did not start (it printed {line!r}); "
                               f"see its error above")
        self._previous = os.environ.get(SOCKET_ENV)
        os.environ[SOCKET_ENV] = str(self.path)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = self._previous
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- the client
def launch(argv: list[str]) -> int:
    """The kernel command: have the zygote fork a kernel with ``argv``; wait for it; return its status."""
    path = os.environ.get(SOCKET_ENV)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if not path:
            raise FileNotFoundError(SOCKET_ENV)
        conn.connect(path)
    except OSError:                               # no zygote: an ordinary kernel, started the slow way
        conn.close()
        os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", *argv])
    request = {"argv": argv, "cwd": os.getcwd(), "env": {k: v for k, v in os.environ.items() if k != SOCKET_ENV}}
    _send_message(conn, json.dumps(request).encode(), fds=(0, 1, 2))
    reader = conn.makefile("r")
    pid = int(reader.readline())

    def forward(signum, _frame) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, forward)
    status = reader.readline().strip()            # '' when the child died without reporting (killed)
    return int(status) if status.lstrip("-").isdigit() else 1


def write_kernelspec(root: str | Path) -> Path:
    """Write the ``mmcourse-grader`` kernelspec under ``root/kernels``; add ``root`` to JUPYTER_PATH to use it."""
    spec_dir = Path(root) / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    # the file by path: the client imports nothing but the standard library, wherever the kernel's cwd is
    spec = {"argv": [sys.executable, str(Path(__file__).resolve()), "launch", "-f", "{connection_file}"],
            "display_name": "Python 3 (mmcourse grader, forked)", "language": "python",
            "interrupt_mode": "signal", "metadata": {"debugger": False}}
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return spec_dir


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classroom.forkkernel", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run a zygote on a Unix socket")
    s.add_argument("socket")
    s.add_argument("--preload", default=",".join(DEFAULT_PRELOAD), help="comma-separated modules to import")
    sub.add_parser("launch", help="the kernel command: every further argument goes to IPKernelApp")
    args = sys.argv[1:] if args is None else list(args)
    if args[:1] == ["launch"]:                    # argparse would take the kernel's own options for its own
        return launch(args[1:])
    parsed = parser.parse_args(args)
    if parsed.command == "serve":
        started = time.perf_counter()
        serve(parsed.socket, [m for m in parsed.preload.split(",") if m],
              ready=lambda: print("ready", flush=True) or print(
                  f"zygote ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True))
        return 0
    parser.error("launch takes the kernel's arguments")


if __name__ == "__main__":
    sys.exit(main())
