"""The program that runs inside the code sandbox: it sets up its own limits, then runs model code.

Why: :mod:`reasondistill.verify.sandbox` starts ``python -I -B -c <this file's text>`` inside new
namespaces, with a read-only root that holds no project files. This file cannot import
reasondistill (it is not mounted there), so it is self-contained. In order, before any model
code runs, it:

1. reads its job (code, tests, limits, a one-time nonce) from fd 0 with ``os.read``, so the job
   never sits in a Python buffer object, and replaces fd 0 with /dev/null;
2. sets rlimits (memory, CPU, file size, processes, open files, no core dumps);
3. checks the seccomp filter (x86_64) that its prelude installed: no fork, no threads, no
   ptrace or process_vm_*, no pidfd, no signals to other processes, no sockets but AF_UNIX, no
   timers, no unshare/setns/mount, no io_uring/bpf/userfaultfd/keyctl. The prelude is this file
   run with ``--seccomp-then-exec``: it loads the filter through ctypes, then execs the child,
   so ctypes is never loaded in the process that runs model code;
4. installs an audit hook that refuses ctypes/cffi and the CPython test modules, tracing, heap
   inspection (``gc.get_objects``...), new audit hooks, swapping a function's ``__code__``,
   process creation, sockets, signals to others and writes outside /sandbox (a refusal is
   recorded even when the code catches the exception), and that never shows its own frames
   through a traceback;
5. hands the nonce to that hook and forgets it. Only the hook can write a result (the nonce, the
   status, the violations) to the result pipe, and only when asked by the frame of ``main`` that
   registered itself before model code ran: model code cannot run in that frame, so it can ask,
   but is refused (and the attempt is recorded). ``main`` reports "passed" only when the tests
   returned normally.

No code of the program runs while a frame of the hook is live (which would hand it the hook's
locals): the hook calls nothing the program defined, garbage collection (which runs finalizers)
is off inside it, and there is no asynchronous signal (no timers, no threads, and RLIMIT_CPU
kills with SIGKILL rather than a catchable SIGXCPU).

Every name the hook and ``main`` use after model code starts is bound before it (closure cells or
default arguments), so patching builtins, ``json``, ``os`` or this module's globals changes
nothing here. Residual risks are listed in docs/sandbox.md.
"""

import gc
import os
import resource
import struct
import sys

REGISTER = "reasondistill.sandbox.register"
REPORT = "reasondistill.sandbox.report"
WORKDIR = "/sandbox"
STATUSES = frozenset({"passed", "test failed", "error", "syntax error", "memory limit", "output limit",
                      "exited early"})

# x86_64 syscall numbers refused with EPERM (kernel-enforced, whatever Python does).
DENIED_X86_64 = (
    56, 57, 58, 322,  # clone (so no threads either), fork, vfork, execveat (execve: see seccomp_then_exec)
    101, 310, 311, 312,  # ptrace, process_vm_readv/writev, kcmp
    434, 424, 438,  # pidfd_open, pidfd_send_signal, pidfd_getfd
    200, 129, 297,  # tkill, rt_sigqueueinfo, rt_tgsigqueueinfo
    272, 308, 165, 166, 155, 161,  # unshare, setns, mount, umount2, pivot_root, chroot
    428, 429, 430, 431, 432, 433, 442,  # open_tree, move_mount, fsopen..fspick, mount_setattr
    250, 248, 249, 321, 298, 323,  # keyctl, add_key, request_key, bpf, perf_event_open, userfaultfd
    425, 426, 427,  # io_uring_setup/enter/register (would bypass this filter)
    37, 38, 222,  # alarm, setitimer, timer_create (no asynchronous signal handlers)
    246, 320, 175, 313, 176,  # kexec_load, kexec_file_load, init/finit/delete_module
    303, 304, 135, 133, 259, 440,  # name_to_handle_at, open_by_handle_at, personality, mknod(at), process_madvise
    163, 167, 168, 169, 170, 171, 172, 173, 179,  # acct, swapon/off, reboot, set*name, iopl, ioperm, quotactl
)
CLONE3, KILL, TGKILL, SOCKET, SOCKETPAIR = 435, 62, 234, 41, 53
AF_UNIX, EPERM = 1, 1
EFBIG = 27  # a write past RLIMIT_FSIZE (SIGXFSZ is ignored): stdout, stderr or a file too big


def read_job() -> dict:
    """The job: one JSON line on fd 0, read without Python buffer objects; fd 0 then /dev/null."""
    import json

    chunks = []
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    return json.loads(b"".join(chunks))


def set_limits(limits: dict) -> None:
    """Hard rlimits. CPU: soft = hard, so the kernel sends SIGKILL and never SIGXCPU, whose
    handler (the program's) would run at a moment the program does not choose, maybe inside
    the audit hook."""
    import signal

    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write fails with EFBIG instead


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def seccomp_program(pid: int) -> bytes:
    """A classic-BPF seccomp filter for x86_64 (see DENIED_X86_64 and the argument checks)."""
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill = 0x7FFF0000, 0x80000000
    errno = lambda e: 0x00050000 | e  # noqa: E731
    prog = [_insn(ld, 4), _insn(jeq, 0xC000003E, 1, 0), _insn(ret, kill),  # arch must be x86_64
            _insn(ld, 0), _insn(jge, 0x40000000, 0, 1), _insn(ret, kill)]  # no x32 ABI
    for nr in DENIED_X86_64:
        prog += [_insn(jeq, nr, 0, 1), _insn(ret, errno(EPERM))]
    prog += [_insn(jeq, CLONE3, 0, 1), _insn(ret, errno(EPERM))]
    for nr, value in ((KILL, pid), (TGKILL, pid), (SOCKET, AF_UNIX), (SOCKETPAIR, AF_UNIX)):
        # if nr: allow when the first argument passes the test, else EPERM; A is reloaded after
        prog += [_insn(jeq, nr, 0, 4), _insn(ld, 16), _insn(jeq, value, 1, 0),
                 _insn(ret, errno(EPERM)), _insn(ret, allow)]
    return b"".join(prog + [_insn(ret, allow)])


def install_seccomp() -> None:
    """Load the filter with ctypes (x86_64 only)."""
    if os.uname().machine != "x86_64":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    program = seccomp_program(os.getpid())
    buf = ctypes.create_string_buffer(program, len(program))

    class FProg(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = FProg(len(program) // 8, ctypes.addressof(buf))
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp: prctl failed")


def seccomp_then_exec(source: str) -> None:
    """The prelude: install the filter, then replace this process by the child proper.

    ctypes is needed for ``prctl`` but must not stay loaded: CPython caches a single-phase C
    extension such as ``_ctypes``, and loading a cached one (``ExtensionFileLoader``) raises no
    audit event, so the program could get ctypes back past the hook. Hence a fresh interpreter,
    which inherits the filter. The filter allows ``execve`` for this one call; afterwards the hook
    refuses ``os.exec*``, and an exec would only give up the nonce and the hook, not the
    namespaces or the filter.
    """
    try:
        install_seccomp()
        os.execv(sys.executable, [sys.executable, "-I", "-B", "-c", source])
    except OSError as exc:
        os.write(2, f"sandbox: cannot install the seccomp filter: {exc}\n".encode())
        os._exit(97)  # the parent reports "sandbox error"


def seccomp_active() -> bool:
    """Whether the prelude's filter holds (an AF_INET socket is refused; the namespace allows one)."""
    import socket

    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()
    except PermissionError:
        return True
    return False


# event -> what is refused; "import" is handled by module name
REFUSED = {
    "_thread.start_new_thread": "threads", "sys.settrace": "tracing", "sys.setprofile": "tracing",
    "sys.monitoring.register_callback": "tracing",  # Python 3.12+: callbacks would run inside the hook
    "sys.addaudithook": "audit hooks", "gc.get_objects": "heap inspection",
    "gc.get_referrers": "heap inspection", "gc.get_referents": "heap inspection",
    "os.fork": "process creation", "os.forkpty": "process creation", "os.system": "process creation",
    "os.exec": "process creation", "os.posix_spawn": "process creation", "os.spawn": "process creation",
    "subprocess.Popen": "process creation", "pty.spawn": "process creation",
    "ctypes.dlopen": "foreign-function access", "ctypes.dlsym": "foreign-function access",
    "ctypes.call_function": "foreign-function access", "ctypes.cdata": "foreign-function access",
    "os.pidfd_open": "signalling other processes", "signal.pthread_kill": "signalling other processes",
}
HIDDEN_MODULES = frozenset({"ctypes", "_ctypes"})  # ImportError only: numpy works without ctypes
REFUSED_MODULES = {
    "cffi": "foreign-function access", "_cffi_backend": "foreign-function access",
    "_ctypes_test": "foreign-function access", "_posixsubprocess": "process creation",
    **{m: "CPython test internals" for m in ("_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic",
                                             "_testimportmultiple", "_testmultiphase", "_xxtestfuzz",
                                             "_xxsubinterpreters", "_xxinterpchannels")},
}
PATH_ARGS = {"open": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,),
             "os.chown": (0,), "os.rename": (0, 1), "os.link": (0, 1), "os.symlink": (1,),
             "os.truncate": (0,), "os.utime": (0,), "os.lchown": (0,), "os.mkfifo": (0,),
             "os.mknod": (0,), "shutil.rmtree": (0,)}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


# The hook is built from closures, not a class or module globals: the program can rebind
# anything it can name (``sys.modules["__main__"].deny = ...`` switched the old hook off), and it
# can name neither a closure cell nor a local of a function that has returned. Each factory binds
# every builtin and table it needs before the program runs. The code objects of the inner
# functions go into ``protected``: a traceback entry for one of their frames is never shown, since
# a frame's locals include its closure cells, whose functions' closures lead to the nonce.


def _traceback_type() -> type:
    try:
        raise ValueError
    except ValueError as exc:
        return type(exc.__traceback__)


def make_deny(seen: list):
    """deny(what): record ``what`` once and raise (a builtin class: one defined here could be
    given an ``__init__`` that runs inside the hook)."""
    violation = PermissionError

    def deny(what: str):
        if what not in seen:
            seen.append(what)
        raise violation("sandbox: " + what + " is not allowed")

    return deny


def make_outside():
    """outside(path): whether writing ``path`` might reach outside /sandbox (the kernel refuses
    it anyway; this names the attempt). Anything but an exact str, bytes or int counts as outside:
    a PathLike would run the program's own ``__fspath__`` inside the hook."""
    type_, str_, bytes_, int_, workdir = type, str, bytes, int, WORKDIR

    def outside(path) -> bool:
        if type_(path) is bytes_:
            path = path.decode("utf-8", "replace")
        if type_(path) is int_ or path is None:
            return False
        if type_(path) is not str_:
            return True
        inside = not path.startswith("/") or path == workdir or path.startswith(workdir + "/") \
            or path == "/tmp" or path.startswith("/tmp/") or path == "/dev/null"
        return not inside or "/../" in "/" + path + "/"

    return outside


def make_report(nonce: str, result_fd: int, state: dict, seen: list, deny):
    """report(status, detail): write the one result line, if asked by the registered frame."""
    fd_identity = (os.fstat(result_fd).st_dev, os.fstat(result_fd).st_ino)
    getframe, fstat, write, statuses = sys._getframe, os.fstat, os.write, STATUSES
    type_, str_, sorted_ = type, str, sorted

    def report(status, detail):
        state["inner"] = True
        try:
            caller = getframe(3)  # report <- dispatch <- hook <- the frame that called sys.audit
        finally:
            state["inner"] = False
        if caller is not state["frame"] or state["reported"] or type_(status) is not str_ \
                or status not in statuses or type_(detail) is not str_:
            deny("forging the result")
        state["reported"] = True
        fd = fstat(result_fd)
        if (fd.st_dev, fd.st_ino) != fd_identity:
            return  # the program replaced our pipe: no result, so no pass
        line = "\t".join([nonce, status, str_.encode(detail, "utf-8", "replace")[:1500].hex(),
                          ",".join(sorted_(seen))]) + "\n"
        write(result_fd, line.encode())

    return report


def make_rules(pid: int, state: dict, protected: set, deny, outside):
    """check_event(event, args): the rules for every audit event but ours."""
    refused, hidden, refused_modules, path_args = dict(REFUSED), HIDDEN_MODULES, dict(REFUSED_MODULES), dict(PATH_ARGS)
    type_, str_, int_, len_, repr_, write_flags = type, str, int, len, repr, WRITE_FLAGS
    violation, hidden_error, traceback_type = PermissionError, ModuleNotFoundError, _traceback_type()

    def check_write(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            writing = (type_(mode) is str_ and ("w" in mode or "a" in mode or "x" in mode or "+" in mode)) or (
                type_(flags) is int_ and flags & write_flags != 0)
            if writing and outside(args[0]):
                deny("write outside the sandbox")
            return
        for i in path_args[event]:
            if i < len_(args) and outside(args[i]):
                deny("write outside the sandbox")

    def check_import(name):
        """Every dotted part counts: a loader named "x._ctypes" would load _ctypes all the same."""
        if type_(name) is not str_:
            deny("importing by a non-string name")
        for part in name.split("."):
            if part in hidden:
                raise hidden_error("sandbox: no module named " + repr_(part))
            if part in refused_modules:
                deny(refused_modules[part])

    def hides_our_frame(traceback) -> bool:
        state["inner"] = True  # the two attribute reads below are audited too
        try:
            return traceback.tb_frame.f_code in protected
        finally:
            state["inner"] = False

    def check_event(event, args):
        what = refused.get(event)
        if what is not None:
            deny(what)
        if event == "import":
            check_import(args[0])
        elif event.startswith("socket."):
            deny("network")
        elif event == "os.kill" or event == "os.killpg":
            if type_(args[0]) is not int_ or args[0] != pid or event == "os.killpg":
                deny("signalling other processes")
        elif event == "object.__setattr__" and len_(args) > 1 and type_(args[1]) is str_ \
                and args[1] == "__code__":
            deny("replacing a function's code")
        elif event == "object.__getattr__" and len_(args) > 1 and type_(args[0]) is traceback_type \
                and type_(args[1]) is str_ and args[1] == "tb_frame" and hides_our_frame(args[0]):
            raise violation("sandbox: the sandbox's own frames are not visible")
        elif event in path_args:
            check_write(event, args)

    protected.update(f.__code__ for f in (check_write, check_import, hides_our_frame, check_event))
    return check_event


def make_hook(nonce: str, result_fd: int, pid: int):
    """The audit hook. The nonce and the result fd live in its closures and nowhere else."""
    state, seen, protected = {"frame": None, "reported": False, "inner": False}, [], set()
    deny, outside = make_deny(seen), make_outside()
    report = make_report(nonce, result_fd, state, seen, deny)
    check_event = make_rules(pid, state, protected, deny, outside)
    type_, str_, tuple_, len_, report_event, register_event = type, str, tuple, len, REPORT, REGISTER
    gc_isenabled, gc_disable, gc_enable = gc.isenabled, gc.disable, gc.enable

    def hook(event, args):
        """Garbage collection is off while the hook runs: a collection could run the program's
        finalizers (``__del__``, gc callbacks) with this hook's frame as their caller."""
        collecting = gc_isenabled()
        gc_disable()
        try:
            return dispatch(event, args)
        finally:
            if collecting:
                gc_enable()

    def dispatch(event, args):
        if type_(event) is not str_ or type_(args) is not tuple_:
            deny("forging the result")
        if state["inner"]:
            return None  # our own audited reads (sys._getframe, tb_frame, f_code)
        if event == report_event:
            return report(*args) if len_(args) == 2 else deny("forging the result")
        if event == register_event:
            if state["frame"] is not None:
                deny("forging the result")
            state["frame"] = args[0]
            return None
        return check_event(event, args)

    protected.update(f.__code__ for f in (hook, dispatch, deny, outside, report))
    return hook


def harden(job: dict) -> None:
    """Limits, seccomp, the audit hook; afterwards the nonce exists only in the hook."""
    set_limits(job.pop("limits"))
    if os.uname().machine == "x86_64" and not seccomp_active():
        os.write(2, b"sandbox: the seccomp filter is not active\n")
        os._exit(97)  # before the "started" line: the parent reports "sandbox error"
    nonce = job.pop("nonce")
    os.write(job["result_fd"], (nonce + "\tstarted\n").encode())  # the sandbox is up: what follows is the program's
    hook = make_hook(nonce, job["result_fd"], os.getpid())
    sys.addaudithook(hook)


def describe(exc: BaseException, sources: dict) -> str:
    """``Type: message at file:line: source`` for the last frame in solution.py or tests.py.

    Walks the traceback itself: the sandbox refuses to show its own frames, which end the walk.
    """
    try:
        where, tb = "", exc.__traceback__
        while tb is not None:
            try:
                name = tb.tb_frame.f_code.co_filename
            except BaseException:
                break
            if name in sources:
                lines = sources[name].splitlines()
                line = lines[tb.tb_lineno - 1].strip() if 0 < tb.tb_lineno <= len(lines) else ""
                where = f" at {name}:{tb.tb_lineno}: {line}"
            tb = tb.tb_next
        return (f"{type(exc).__name__}: {exc}"[:300] + where)[:800]
    except BaseException:  # the program's exception may refuse to be printed
        return "an exception that cannot be printed"


def run_job(job: dict, exec_=exec, compile_=compile, str_=str, describe_=describe, syntax=SyntaxError,
            memory=MemoryError, assertion=AssertionError, exit_=SystemExit, base=BaseException,
            oserror=OSError, type_=type, efbig=EFBIG):
    """(status, detail) of the solution then the tests; "passed" only if the tests return."""
    scope = {"__name__": "solution", "__builtins__": __builtins__}  # skip `if __name__ == "__main__":`
    phase = "syntax"
    try:
        solution = compile_(job["solution"], "solution.py", "exec")
        tests = compile_(job["tests"], "tests.py", "exec")
        phase = "solution"
        exec_(solution, scope)
        phase = "tests"
        exec_(tests, scope)
        return "passed", ""
    except syntax as exc:
        if phase == "syntax":
            return "syntax error", f"{exc.msg} (line {exc.lineno})"
        status, caught = "error", exc
    except memory as exc:
        status, caught = "memory limit", exc
    except assertion as exc:
        status, caught = ("test failed" if phase == "tests" else "error"), exc
    except exit_:
        return "exited early", f"{phase} raised SystemExit"
    except oserror as exc:  # the exact OSError the kernel's EFBIG gives, not a subclass of the program's
        status, caught = ("output limit" if type_(exc) is oserror and exc.errno == efbig else "error"), exc
    except base as exc:
        status, caught = "error", exc
    return status, describe_(caught, {"solution.py": job["solution"], "tests.py": job["tests"]})


def main(audit=sys.audit, getframe=sys._getframe, exit_=os._exit, type_=type, str_=str, base=BaseException):
    """Harden, register this frame with the hook, run the job, report through the hook, exit."""
    job = read_job()
    sys.dont_write_bytecode = True
    harden(job)
    audit(REGISTER, getframe())
    try:
        status, detail = run_job(job)
    except base:  # e.g. the program broke an except clause's class
        status, detail = "error", "the program interrupted the test harness"
    if type_(status) is not str_ or type_(detail) is not str_:
        status, detail = "error", ""
    audit(REPORT, status, detail)
    flush_output()  # after the report: whatever the program put in sys.stdout cannot change it
    exit_(0)  # no atexit, no finalizers, no waiting for anything the program left


def flush_output() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["--seccomp-then-exec"]:
        seccomp_then_exec(sys.argv[2])
    else:
        main()
