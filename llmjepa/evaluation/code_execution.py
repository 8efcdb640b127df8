"""pass@1 for code: run each generated program, then the example's tests, in a separate limited process.

Why a separate process: a generated program can loop forever, allocate without bound, crash the
interpreter, or call exit(); none of that may stop or slow llmjepa-eval beyond one program's wall time.
Why the extra Python-level refusals: a generated program can also read, change or delete the user's
files and reach the network, and running HumanEval/MBPP-style code is the point of this scorer.

What one run gets (docs/eval.md, "Code execution", says what is guaranteed and what is not):

- a fresh `python -I -S -B` (no site-packages, no user site, no environment variables of the caller,
  no .pyc writes), stdin from /dev/null, its own session (process group), killed as a group with
  SIGKILL after `timeout_s` of wall time;
- rlimits the runner sets on itself (soft = hard) before the program's first line: address space
  (`memory_mb`), CPU seconds (timeout + 1), file size (16 MiB), no core files, and RLIMIT_NPROC 0 (forks
  fail for a non-root user; root is exempt from it);
- a new network namespace (`unshare -rn`: no interface but a down loopback, enforced by the kernel)
  when an unprivileged user namespace can be made here, checked once per process;
- a temporary working directory, removed afterwards, and an audit hook (PEP 578) installed before the
  program runs that refuses: opening files outside the working directory (reading Python's standard
  library is allowed, or imports would fail), listing or changing directories outside it, any file
  operation (remove, rename, chmod, ...) outside it, starting processes (fork, exec, spawn, system,
  subprocess), signals to other processes, every socket operation, sqlite3 outside it, and importing
  ctypes and _posixsubprocess (whose calls raise no audit event).

The audit hook is not a security boundary: it is in the same interpreter as the program, and Python
code that means harm can get around it. The process, the rlimits, the wall-time kill and (where it is
made) the network namespace are enforced by the kernel.
"""

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The reasons a program is scored as failed, in the order the summary lists them.
REASONS = ("passed", "failed", "syntax_error", "error", "timeout", "memory", "blocked", "exited", "crashed")
FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
OUTPUT_LIMIT = 16 * 1024 * 1024  # RLIMIT_FSIZE: the program's stdout and stderr are files, not pipes
DETAIL_CHARS = 300


@dataclass(frozen=True)
class CodeLimits:
    timeout_s: float = 5.0
    memory_mb: int = 1024


@dataclass(frozen=True)
class CodeResult:
    passed: bool
    reason: str  # one of REASONS
    detail: str = ""  # the exception line, the refused operation, the signal
    seconds: float = 0.0


# ---- the program and its tests ------------------------------------------------------------------
def extract_program(text: str) -> str:
    """The first fenced code block (```python, ```py or a bare ```), or the whole text when there is none.

    An unterminated fence (a generation cut by max_new_tokens) runs to the end of the text."""
    match = FENCE.search(text)
    return match.group(1) if match else text


def program_tests(fields: dict) -> str | None:
    """The Python that checks a program, from an example's JSONL fields; None when it has none.

    - "test": Python source (HumanEval: `def check(candidate): ...`; or plain asserts). With
      "entry_point" (HumanEval), `check(<entry_point>)` is called after it.
    - "test_list": a list of assert strings (MBPP), after "test_setup_code" when there is one.
    Both may be given; "test" runs first."""
    parts = []
    test = fields.get("test")
    if isinstance(test, str) and test.strip():
        parts.append(test)
        entry = fields.get("entry_point")
        if isinstance(entry, str) and entry.isidentifier():
            parts.append(f"check({entry})")
    tests = fields.get("test_list")
    if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
        parts.extend(tests)
    if not parts:
        return None
    setup = fields.get("test_setup_code")
    if isinstance(setup, str) and setup.strip():
        parts.insert(0, setup)
    return "\n".join(parts) + "\n"


def read_test_fields(path: str | Path) -> dict[int, dict]:
    """Line number (1-based, as Example.source names it) -> the line's JSON object, for every
    non-blank line; llmjepa's Example keeps the messages only, so the test fields are read here."""
    out = {}
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            if text.strip():
                obj = json.loads(text)
                out[line] = obj if isinstance(obj, dict) else {}
    return out


def source_line(source: str) -> int:
    """Example.source is "file:line"."""
    return int(source.rsplit(":", 1)[1])


# ---- the sandbox ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def network_namespace() -> bool:
    """Whether `unshare -rn` (a new user and network namespace, no privileges needed) works here."""
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def sandbox_description() -> str:
    return "network namespace (unshare -rn)" if network_namespace() else "audit hook only (no unshare -rn here)"


# The runner: the first thing the child runs. It reads the program, compiles it, installs the audit hook,
# runs it, and writes the outcome to ../report (opened before the hook; the program may not open it) as one
# line that starts with a nonce the program is not told, so that neither a program that writes its own
# "passed" line nor one that fills stdout up to RLIMIT_FSIZE changes the outcome.
RUNNER = r"""
import json, os, resource, sys, sysconfig
setup = json.loads(sys.stdin.readline())
sys.stdin.close()
nonce = setup.pop("nonce")
for name, value in setup.items():  # soft = hard: the program cannot raise them again
    resource.setrlimit(getattr(resource, name), (value, value))
WORK = os.path.realpath(os.getcwd())
READ = tuple(os.path.realpath(p) for p in {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"]})
READ += tuple(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p))
READ_FILES = ("/dev/null", "/dev/urandom", "/dev/zero")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROCESS = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen",
           "os.kill", "os.killpg", "signal.pthread_kill", "pty.spawn", "resource.setrlimit", "os.startfile"}
IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess"}
PATH_OPS = {"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.chown", "os.link", "os.symlink",
            "os.truncate", "os.utime", "os.chflags", "os.lchmod", "os.lchown", "os.listdir", "os.scandir",
            "os.chdir", "os.chroot", "os.mkfifo", "os.mknod", "shutil.rmtree", "shutil.copyfile", "shutil.copymode",
            "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.chown", "shutil.make_archive",
            "shutil.unpack_archive", "glob.glob", "os.setxattr", "os.removexattr", "os.listxattr", "os.getxattr"}
realpath, fspath = os.path.realpath, os.fspath
refused = []  # every refusal, so that a program that catches one still fails

class Refused(Exception):
    def __init__(self, what):
        super().__init__(what)
        refused.append(what)

def inside(path, roots):
    try:
        p = realpath(fspath(path))
    except (TypeError, ValueError):
        return False
    return any(p == r or p.startswith(r + os.sep) for r in roots)

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int) or inside(path, (WORK,)):
            return
        writes = (mode and any(c in str(mode) for c in "wax+")) or (flags or 0) & WRITE_FLAGS
        if not writes and (inside(path, READ) or str(path) in READ_FILES):
            return
        raise Refused(f"open {path!r} outside the working directory")
    if event in PROCESS:
        raise Refused(event)
    if event.startswith("socket."):
        raise Refused(event)
    if event == "import" and args[0].split(".")[0] in IMPORTS:
        raise Refused(f"import {args[0]}")
    if event.startswith("ctypes."):
        raise Refused(event)
    if event == "sqlite3.connect":
        db = args[0]
        if not (str(db) in (":memory:", "") or inside(db, (WORK,))):
            raise Refused(f"sqlite3.connect {db!r}")
    if event in PATH_OPS:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        listing = event in ("os.listdir", "os.scandir", "glob.glob")
        if listing and not paths:
            paths = ["."]
        for p in paths:
            if not (inside(p, (WORK,)) or listing and inside(p, READ)):
                raise Refused(f"{event} {p!r} outside the working directory")

report_fd = os.open(os.path.join(os.path.dirname(WORK), "report"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

def report(reason, detail=""):
    os.write(report_fd, (nonce + " " + json.dumps({"reason": reason, "detail": detail[:300]}) + "\n").encode())
    os._exit(0)

with open(os.path.join(os.path.dirname(WORK), "program.py"), encoding="utf-8") as f:
    source = f.read()
try:
    code = compile(source, "program.py", "exec")
except (SyntaxError, ValueError) as e:
    report("syntax_error", f"{type(e).__name__}: {e}")
del f
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except Refused:
    report("blocked", refused[0])
except AssertionError as e:
    if refused:
        report("blocked", refused[0])
    report("failed", f"AssertionError: {e}" if str(e) else "AssertionError")
except MemoryError:
    report("memory", "MemoryError")
except SystemExit as e:
    report("exited", f"SystemExit({e.code!r}) before the tests finished")
except BaseException as e:
    if refused:
        report("blocked", refused[0])
    report("error", f"{type(e).__name__}: {e}")
if refused:
    report("blocked", refused[0] + " (the program went on after the refusal)")
report("passed")
"""


def runner_setup(nonce: str, limits: CodeLimits) -> bytes:
    """The runner's first stdin line: the nonce and the rlimits it sets on itself before the program's first
    line. Set there rather than in a preexec_fn, which is unsafe in a parent with threads (torch's)."""
    rlimits = {
        "RLIMIT_AS": limits.memory_mb * 1024 * 1024,
        "RLIMIT_CPU": int(limits.timeout_s) + 1,
        "RLIMIT_FSIZE": OUTPUT_LIMIT,
        "RLIMIT_CORE": 0,
        "RLIMIT_NPROC": 0,
    }
    return (json.dumps({"nonce": nonce, **rlimits}) + "\n").encode()


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tail(path: Path, chars: int = DETAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4 * chars))
            return f.read().decode("utf-8", "replace")[-chars:]
    except OSError:
        return ""


def run_program(program: str, tests: str, limits: CodeLimits = CodeLimits()) -> CodeResult:
    """Run `program` followed by `tests` in a fresh limited process; passed when the tests finish.

    Never raises for what the program does; its outcome is one of REASONS with a detail line."""
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="llmjepa-code-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        (root / "runner.py").write_text(RUNNER, encoding="utf-8")
        (root / "program.py").write_text(program + "\n\n" + tests, encoding="utf-8")
        cmd = [sys.executable, "-I", "-S", "-B", str(root / "runner.py")]
        if network_namespace():
            cmd = ["unshare", "-rn", *cmd]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8"}
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                try:
                    proc.stdin.write(runner_setup(nonce, limits))
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                kill_group(proc)  # the program's own children too, if any got out
                proc.wait()
        seconds = time.monotonic() - start
        result = classify(proc.returncode, timed_out, root / "report", root / "stderr", nonce, limits)
    return CodeResult(result.passed, result.reason, result.detail, round(seconds, 3))


def classify(returncode: int, timed_out: bool, report_file: Path, stderr: Path, nonce: str, limits: CodeLimits):
    """The runner's report line when it wrote one; otherwise what the process's end says."""
    if timed_out:
        return CodeResult(False, "timeout", f"killed after {limits.timeout_s:g} s of wall time")
    report = None
    for line in tail(report_file, 2000).splitlines():
        if line.startswith(nonce + " "):
            report = line[len(nonce) + 1 :]
    if report is not None and returncode == 0:
        try:
            obj = json.loads(report)
            return CodeResult(obj["reason"] == "passed", obj["reason"], obj.get("detail", ""))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    err = tail(stderr)
    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGXCPU:
            return CodeResult(False, "timeout", f"{sig}: the CPU-time limit ({int(limits.timeout_s) + 1} s)")
        if -returncode == signal.SIGKILL:
            return CodeResult(False, "timeout", "SIGKILL: the CPU-time limit, or the kernel out of memory")
        if -returncode == signal.SIGXFSZ:
            return CodeResult(False, "error", "SIGXFSZ: wrote more than 16 MiB of output")
        return CodeResult(False, "crashed", sig)
    if "MemoryError" in err:
        return CodeResult(False, "memory", "MemoryError")
    if "File too large" in err:
        return CodeResult(False, "error", "wrote more than 16 MiB of output")
    last = err.strip().splitlines()[-1] if err.strip() else ""
    return CodeResult(False, "exited", f"exit status {returncode} before the tests finished {last}".strip())


def score_code(generation: str, tests: str, limits: CodeLimits = CodeLimits()) -> CodeResult:
    """One generation: its program (first fenced block, or all of it) against the tests."""
    return run_program(extract_program(generation), tests, limits)
