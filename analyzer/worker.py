"""Run the user's model code (import, build, trace, probe) in a child process, so that nothing it does can fool
the exit code.

A model file is arbitrary Python. In the CLI's own process, `sys.exit(0)` in it would end `modnorm check` with
exit 0 and no output (a CI gate that passes), `os._exit` would do the same below Python's reach, an endless loop
or a FIFO named model.py would hang the job, and its `print()` would land in the middle of `-f json` on stdout.
In a child, each of these becomes one paragraph and exit 2, naming the file and line:

* `SystemExit` (any code) and `os._exit` are turned into an error at the line that called them (the child's
  `os._exit` is replaced while the job runs, so the call raises instead of ending the process);
* a job still running after `timeout` seconds is stopped; the child's Python stack is dumped first
  (faulthandler) so the error names the line it was stuck on;
* a crash of the interpreter (segfault, abort, the OOM killer) is reported with the signal and, when
  faulthandler could write it, the user's line;
* the child's stdout is redirected to stderr: the model's prints never reach a machine-readable report.

On Linux the child is forked (no re-import: the CLI's process has not imported torch yet, so the child pays for
torch exactly as the CLI did before). Elsewhere the child is spawned and the job pickled by reference.
`MODNORM_WORKER=inline` runs the job in the calling process (for a debugger); SystemExit and stray stdout are
still caught there, hangs and `os._exit` are not.

The job runs with one torch intra-op thread, inline or not. Two OpenMP threads on 2 cores collapse when other
processes compete (issue 21, load ~2: the floors' per-node statistics of ResNet-50 took 11 s of a 41 s check,
and 1 thread ran them 3-6x faster than 2); `--jobs 2` workers would run 4 threads on 2 cores; libgomp's pool
does not survive a fork (a child of a parent that ran torch ops would hang); and a model's build can depend on
the thread count (clean_mlp's orthogonal init: floats differ in the 9th digit), so one fixed count makes the
report the same on every machine and under `--jobs` (parallel.py).
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ModnormError, frame_of_exception

__all__ = ["run_isolated", "DEFAULT_TIMEOUT", "ProcessExit"]

DEFAULT_TIMEOUT = 600.0  # seconds: generous, a 7B model on meta traces in about a minute
_GRACE = 5.0  # seconds the child gets to dump its stack after the timeout, before it is killed


class ProcessExit(BaseException):
    """`os._exit(code)` called by the user's code inside a job (raised instead of ending the child)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run_isolated(job: Callable[..., Any], *args: Any, target: str, timeout: float | None = DEFAULT_TIMEOUT,
                 cores: int | None = None, **kwargs: Any) -> Any:
    """`job(*args, **kwargs)` run in a child process; its result, or its ModnormError raised here.

    `target` is the model file the job runs (named in the errors about exits, hangs and crashes).
    `cores`: how many cores the job may keep busy (weightstore.JOB_CORES; default all this process may run on):
    with two, real weights' norms are computed ahead on a helper thread; one for `--jobs 1`, or for one of several
    jobs sharing the cores (parallel.cores_each)."""
    if os.environ.get("MODNORM_WORKER", "").lower() == "inline":
        with _stdout_to_stderr(), _one_thread():
            return _guarded(job, args, kwargs, target)
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    receiver, sender = context.Pipe(duplex=False)
    # A file by name, not a descriptor: a spawned child (macOS, Windows) inherits no descriptors.
    with tempfile.NamedTemporaryFile(mode="w+", prefix="modnorm-stack-", suffix=".txt") as stack_file:
        for stream in (sys.stdout, sys.stderr):  # else buffered text would be written twice, by both processes
            with contextlib.suppress(Exception):
                stream.flush()
        child = context.Process(target=_child, args=(sender, stack_file.name, job, args, kwargs, target,
                                                     cores))
        child.start()
        sender.close()
        try:
            return _receive(child, receiver, stack_file, target, timeout)
        finally:
            receiver.close()
            if child.is_alive():
                child.kill()
            child.join()


def _receive(child: Any, receiver: Any, stack_file: Any, target: str, timeout: float | None) -> Any:
    if not receiver.poll(timeout):
        if child.is_alive():  # ask for the Python stack, then stop it
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGUSR1)
            child.join(_GRACE)
            child.kill()
            child.join()
            where = _user_line(stack_file, target)
            raise ModnormError(f"the check was still running after {timeout:g} s{_at(where)}",
                               "make the file import and the model build and run quickly, or raise --timeout "
                               "(seconds)", *(where or (target, None)))
    try:
        status, payload = receiver.recv()
    except (EOFError, OSError):
        child.join()
        where = _user_line(stack_file, target)
        raise ModnormError(_death(child.exitcode) + _at(where), "the model file must not end the process "
                           "(os._exit, a crash in an extension, running out of memory); fix the model code",
                           *(where or (target, None))) from None
    if status == "ok":
        return payload
    raise payload


def _at(where: tuple[str, int | None] | None) -> str:
    return f" (last in the model's code at line {where[1]})" if where and where[1] else ""


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.Signals.__members__.values() else -exitcode
        return f"the process running the model's code was killed by signal {name}"
    return f"the process running the model's code ended with exit code {exitcode} before it reported"


def _user_line(stack_file: Any, target: str) -> tuple[str, int | None] | None:
    """The innermost frame in the model file of the stack faulthandler dumped (it lists the newest call first)."""
    stack_file.seek(0)
    text = stack_file.read()
    wanted = _resolved(_model_path(target))
    for file, line in re.findall(r'File "([^"]+)", line (\d+)', text):
        if _resolved(file) == wanted:
            return file, int(line)
    return None


def _model_path(target: str) -> str:
    from .target import parse_target

    return str(parse_target(target)[0])


def _resolved(path: str) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return path


def _child(sender: Any, stack_path: str, job: Callable[..., Any], args: tuple, kwargs: dict,
           target: str, cores: int | None) -> None:
    stack = open(stack_path, "w")  # noqa: SIM115 - faulthandler keeps writing to it until the process ends
    faulthandler.enable(file=stack)  # a segfault or abort leaves the stack for the parent to read
    faulthandler.register(signal.SIGUSR1, file=stack, all_threads=False)  # the parent's timeout asks for it
    _forget_inherited_fork_server()
    import torch

    torch.set_num_threads(1)  # module docstring: one thread
    from . import weightstore

    from .parallel import usable_cores

    weightstore.JOB_CORES = cores or usable_cores()  # this process runs this one job, in one torch thread
    with _stdout_to_stderr(), _exits_as_errors(target):
        try:
            message: tuple[str, Any] = ("ok", _guarded(job, args, kwargs, target))
        except ModnormError as error:
            message = ("error", error)
    try:
        sender.send(message)
    except Exception as exc:  # noqa: BLE001 - e.g. a result that does not pickle: still one paragraph
        sender.send(("error", ModnormError(f"internal error: the result could not be sent back "
                                           f"({type(exc).__name__}: {exc}). This is a bug in modnorm")))
    sender.close()


def _forget_inherited_fork_server() -> None:
    """A forked child inherits the parent's fork-server handle (`--jobs`, parallel.py), but the server is not its
    child: waiting on it fails with ECHILD. Forget the handle, so a sweep with --jobs here starts its own server."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    with contextlib.suppress(OSError, TypeError):
        os.close(server._forkserver_alive_fd)  # our copy only: the parent's keeps its server alive
    server._forkserver_address = server._forkserver_alive_fd = server._forkserver_pid = None
    server._inherited_fds = None


def _guarded(job: Callable[..., Any], args: tuple, kwargs: dict, target: str) -> Any:
    """`job` with every way out of the user's code (exit, os._exit, exceptions escaping modnorm's handling) made a
    ModnormError naming the model's line."""
    try:
        return job(*args, **kwargs)
    except ModnormError:
        raise
    except (SystemExit, ProcessExit) as exc:
        how = "os._exit" if isinstance(exc, ProcessExit) else "sys.exit (SystemExit)"
        code = exc.code
        frame = frame_of_exception(exc, _model_path(target))
        raise ModnormError(f"the model's code called {how} with {code!r}"
                           + (f' at "{frame[2]}"' if frame and frame[2] else ""),
                           "a model file must not exit the process when it is imported, built or run; guard the "
                           "script part with `if __name__ == \"__main__\":`",
                           frame[0] if frame else _model_path(target), frame[1] if frame else None) from None
    except KeyboardInterrupt as exc:  # raised by the model's code itself (a real Ctrl-C stops the parent too)
        frame = frame_of_exception(exc, _model_path(target))
        raise ModnormError("the model's code raised KeyboardInterrupt", "remove the raise or the input() call",
                           frame[0] if frame else _model_path(target), frame[1] if frame else None) from None
    except Exception as exc:  # noqa: BLE001 - the CLI's own catch-all explains it; keep the traceback text
        if os.environ.get("MODNORM_TRACEBACK"):
            traceback.print_exc()
        from .errors import internal_error

        raise internal_error(exc) from None


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The inline job in one torch thread, as in the child (module docstring); the caller's count restored."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Everything written to stdout (Python's print and C code writing to fd 1) goes to stderr instead."""
    saved_fd = None
    with contextlib.suppress(OSError, ValueError):
        sys.__stdout__.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        if saved_fd is not None:
            with contextlib.suppress(OSError, ValueError):
                sys.__stdout__.flush()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


@contextlib.contextmanager
def _exits_as_errors(target: str) -> Iterator[None]:
    """While the job runs, `os._exit(code)` raises ProcessExit at the caller's line instead of ending the process."""
    original = os._exit

    def refuse_exit(code: int = 0) -> None:
        raise ProcessExit(code)

    os._exit = refuse_exit  # type: ignore[assignment]
    try:
        yield
    finally:
        os._exit = original
