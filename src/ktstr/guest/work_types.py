"""The work kinds: each builds a ``step()`` doing one unit of work and
reporting it to the worker's Telemetry (blocked time and wake latencies
included, so scheduling gaps exclude intended sleeps)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from ktstr.protocol.messages import MAX_LAT_SAMPLES
from ktstr.spec.work import Work, WorkKind

#: Wake-up latencies a worker keeps (a uniform reservoir; p99 from its 50
#: highest). Its report costs time to build, write and send, which under
#: one TCG thread is every worker's at once: 20000 (the protocol's bound)
#: made stopping 4 pipe pairs take 10-13 s at 4 vCPUs.
LAT_RESERVOIR = min(5000, MAX_LAT_SAMPLES)


Step = Callable[[], None]
SPIN_UNIT = 2000  # additions per spin unit (~50 us native, a few x slower under TCG)
_SYS_FUTEX = 202  # x86_64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_ns = time.monotonic_ns


try:  # the C hot loops (src/ktstr/_native.c); pure Python when not built
    from ktstr import _native

    NATIVE = True
except ImportError:  # pragma: no cover - depends on the install
    NATIVE = False


class Stop(BaseException):
    """Raised in a worker when it is told to stop (SIGUSR1)."""


class Tel(Protocol):
    def tick(self, units: int = 1, blocked_ns: int = 0) -> None: ...
    def latency(self, ns: int) -> None: ...
    def place(self, waker_cpu: int) -> None: ...
    def absorb(self, native: dict[str, object]) -> None: ...

    mem_node: int


def spin(n: int = SPIN_UNIT) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


@dataclass
class Shared:
    """Resources created before fork and shared by a pair or a cgroup."""

    pipes: tuple[tuple[int, int], tuple[int, int]] | None = None  # a->b, b->a
    page: mmap.mmap | None = None  # futex words + timestamps
    lock_path: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Ctx:
    """What a step needs; also what a Custom function receives."""

    work: Work
    tel: Tel
    worker: int  # index within the cgroup
    role: int  # 0 or 1 within a pair
    shared: Shared
    allowed: tuple[int, ...]
    scratch_dir: str = "/tmp"


def _sleep(ctx: Ctx, seconds: float) -> int:
    """Sleep; record oversleep as a wake latency; return ns slept."""
    t = _ns()
    time.sleep(seconds)
    slept = _ns() - t
    ctx.tel.latency(max(0, slept - int(seconds * 1e9)))
    return slept


def _cpu_spin(ctx: Ctx) -> Step:
    tel = ctx.tel

    def step() -> None:
        spin()
        tel.tick()

    return step


def _yield_heavy(ctx: Ctx) -> Step:
    def step() -> None:
        spin(200)
        os.sched_yield()
        ctx.tel.tick()

    return step


def _mixed(ctx: Ctx) -> Step:
    state = [0]

    def step() -> None:
        state[0] += 1
        phase = state[0] % 3
        blocked = 0
        if phase == 0:
            spin()
        elif phase == 1:
            os.sched_yield()
        else:
            blocked = _sleep(ctx, 0.0002)
        ctx.tel.tick(blocked_ns=blocked)

    return step


def _io_sync(ctx: Ctx) -> Step:
    path = os.path.join(ctx.scratch_dir, f"ktstr-io-{os.getpid()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.unlink(path)
    block = b"k" * 4096

    def step() -> None:
        os.pwrite(fd, block, 0)
        os.fsync(fd)
        ctx.tel.tick()

    return step


def _bursty(ctx: Ctx) -> Step:
    burst_ns = int(ctx.work.burst_ms * 1e6)
    sleep_s = ctx.work.sleep_ms / 1000

    def step() -> None:
        end = _ns() + burst_ns
        while _ns() < end:
            spin(500)
            ctx.tel.tick()
        ctx.tel.tick(units=0, blocked_ns=_sleep(ctx, sleep_s) if sleep_s else 0)

    return step


def _native_pingpong(ctx: Ctx, kind: int) -> Step:
    """Run the whole exchange in C until SIGUSR1, then stop."""
    rd = wr = -1
    if ctx.shared.pipes is not None:
        (ab_r, ab_w), (ba_r, ba_w) = ctx.shared.pipes
        rd, wr = (ba_r, ab_w) if ctx.role == 0 else (ab_r, ba_w)
    page = ctx.shared.page if ctx.shared.page is not None else bytearray(16)

    def step() -> None:
        ctx.tel.absorb(_native.pingpong(kind, ctx.role, rd, wr, page, LAT_RESERVOIR))
        raise Stop

    return step


#: A message between the two of a pair: when it was sent, and from which CPU
#: (the woken side counts its wake-up by both CPUs: ``Tel.place``).
MSG = struct.Struct("<qq")


def send_msg(fd: int) -> None:
    os.write(fd, MSG.pack(_ns(), _libc.sched_getcpu()))


def receive_msg(tel: Tel, fd: int) -> int:
    """Wait for a message; record its wake latency and place; return ns waited."""
    t = _ns()
    data = os.read(fd, MSG.size)
    now = _ns()
    if len(data) == MSG.size:
        stamp, cpu = MSG.unpack(data)
        tel.latency(now - stamp)
        tel.place(cpu)
    return now - t


def _pipe_io(ctx: Ctx) -> Step:
    """Role 0 sends a message, then waits for the reply; role 1 waits, then
    replies. The reader records now - the sender's stamp."""
    if NATIVE:
        return _native_pingpong(ctx, 1)
    assert ctx.shared.pipes is not None
    (ab_r, ab_w), (ba_r, ba_w) = ctx.shared.pipes
    rd, wr = (ba_r, ab_w) if ctx.role == 0 else (ab_r, ba_w)

    def step() -> None:
        if ctx.role == 0:
            send_msg(wr)
            blocked = receive_msg(ctx.tel, rd)
        else:
            blocked = receive_msg(ctx.tel, rd)
            send_msg(wr)
        ctx.tel.tick(blocked_ns=blocked)

    return step


def _futex(addr: int, op: int, val: int, timeout_ns: int = 0) -> int:
    ts = None
    if timeout_ns:
        ts = struct.pack("<qq", timeout_ns // 1_000_000_000, timeout_ns % 1_000_000_000)
    tsp = ctypes.c_char_p(ts) if ts else None
    return int(_libc.syscall(_SYS_FUTEX, ctypes.c_void_p(addr), op, val, tsp, None, 0))


def _futex_pingpong(ctx: Ctx) -> Step:
    """Word 0 is whose turn it is (0 or 1), word 1 the waker's CPU; bytes
    8-16 (int64) are when the waker wrote it. The woken side records now -
    that as wake latency, and where both ran."""
    if NATIVE:
        return _native_pingpong(ctx, 0)
    page = ctx.shared.page
    assert page is not None
    turn = ctypes.c_int32.from_buffer(page, 0)
    waker = ctypes.c_int32.from_buffer(page, 4)
    stamp = ctypes.c_int64.from_buffer(page, 8)
    addr = ctypes.addressof(turn)
    me, other = ctx.role, 1 - ctx.role

    def step() -> None:
        t = _ns()
        while turn.value != me:
            _futex(addr, _FUTEX_WAIT, other, 100_000_000)  # 100 ms, so stop is noticed
        now = _ns()
        if stamp.value:  # 0 until the first handover
            ctx.tel.latency(now - stamp.value)
            ctx.tel.place(waker.value)
        spin(50)
        waker.value = _libc.sched_getcpu()
        stamp.value = _ns()
        turn.value = other
        _futex(addr, _FUTEX_WAKE, 1)
        ctx.tel.tick(blocked_ns=now - t)

    return step


def _cache_pressure(ctx: Ctx) -> Step:
    buf = bytearray(ctx.work.size_kb * 1024)
    stride = ctx.work.stride

    def step() -> None:
        bytes(buf[::stride])  # a strided walk at C speed
        buf[0] = (buf[0] + 1) & 0xFF
        ctx.tel.tick()

    return step


@contextlib.contextmanager
def stop_deferred() -> Iterator[set[int | signal.Signals]]:
    """SIGUSR1 (the stop) blocked inside, pending until the block ends;
    yields the mask to restore (a forked child inherits the block)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        yield old
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def fork_and_wait(ctx: Ctx, child: Callable[[], None]) -> None:
    """Fork, run ``child`` in the child (then exit), wait for it; one tick.
    The stop signal waits until after fork: raised inside an at-fork hook
    it would be ignored."""
    with stop_deferred() as old:
        pid = os.fork()
        if pid == 0:
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
                child()
            finally:
                os._exit(0)
    t = _ns()
    os.waitpid(pid, 0)
    ctx.tel.tick(blocked_ns=_ns() - t)


def _fork_exit(ctx: Ctx) -> Step:
    return lambda: fork_and_wait(ctx, lambda: None)


def _nice_sweep(ctx: Ctx) -> Step:
    state = [0]

    def step() -> None:
        state[0] = (state[0] + 1) % 20
        os.setpriority(os.PRIO_PROCESS, 0, state[0])
        spin()
        ctx.tel.tick()

    return step


def _affinity_churn(ctx: Ctx) -> Step:
    cpus = ctx.allowed or tuple(sorted(os.sched_getaffinity(0)))
    state = [ctx.worker]

    def step() -> None:
        state[0] += 1
        os.sched_setaffinity(0, {cpus[state[0] % len(cpus)]})
        spin(500)
        ctx.tel.tick()

    return step


def _policy_churn(ctx: Ctx) -> Step:
    policies = (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE)
    state = [0]

    def step() -> None:
        state[0] += 1
        os.sched_setscheduler(0, policies[state[0] % 3], os.sched_param(0))
        spin(500)
        ctx.tel.tick()

    return step


def _mutex_contention(ctx: Ctx) -> Step:
    fd = os.open(ctx.shared.lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def step() -> None:
        t = _ns()
        fcntl.flock(fd, fcntl.LOCK_EX)
        got = _ns()
        ctx.tel.latency(got - t)
        spin(300)
        fcntl.flock(fd, fcntl.LOCK_UN)
        ctx.tel.tick(blocked_ns=got - t)

    return step


def _sequence(ctx: Ctx) -> Step:
    phases = [
        (
            make_step(
                Ctx(w, ctx.tel, ctx.worker, ctx.role, ctx.shared, ctx.allowed, ctx.scratch_dir)
            ),
            int(s * 1e9),
        )
        for w, s in ctx.work.phases
    ]
    state = {"i": 0, "until": _ns() + phases[0][1]}

    def step() -> None:
        if _ns() >= state["until"]:
            state["i"] = (state["i"] + 1) % len(phases)
            state["until"] = _ns() + phases[state["i"]][1]
        phases[state["i"]][0]()

    return step


def _custom(ctx: Ctx) -> Step:
    module, _, name = ctx.work.function.partition(":")
    fn = getattr(importlib.import_module(module), name)

    def step() -> None:
        fn(ctx)
        ctx.tel.tick()

    return step


_FACTORIES: dict[WorkKind, Callable[[Ctx], Step]] = {
    WorkKind.CPU_SPIN: _cpu_spin,
    WorkKind.YIELD_HEAVY: _yield_heavy,
    WorkKind.MIXED: _mixed,
    WorkKind.IO_SYNC: _io_sync,
    WorkKind.BURSTY: _bursty,
    WorkKind.PIPE_IO: _pipe_io,
    WorkKind.FUTEX_PINGPONG: _futex_pingpong,
    WorkKind.CACHE_PRESSURE: _cache_pressure,
    WorkKind.FORK_EXIT: _fork_exit,
    WorkKind.NICE_SWEEP: _nice_sweep,
    WorkKind.AFFINITY_CHURN: _affinity_churn,
    WorkKind.POLICY_CHURN: _policy_churn,
    WorkKind.MUTEX_CONTENTION: _mutex_contention,
    WorkKind.SEQUENCE: _sequence,
    WorkKind.CUSTOM: _custom,
}


def make_step(ctx: Ctx) -> Step:
    factory = _FACTORIES.get(ctx.work.kind)
    if factory is None:
        from ktstr.guest.work_more import FACTORIES

        factory = FACTORIES[ctx.work.kind]
    return factory(ctx)


def make_shared(work: Work, scratch_dir: str, tag: str) -> Shared:
    """Per pair (paired kinds) or per cgroup (mutex) resources, before fork."""
    if work.kind is WorkKind.PIPE_IO:
        return Shared(pipes=(os.pipe(), os.pipe()))
    if work.kind is WorkKind.FUTEX_PINGPONG:
        page = mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED)
        return Shared(page=page)
    if work.kind is WorkKind.MUTEX_CONTENTION:
        return Shared(lock_path=os.path.join(scratch_dir, f"ktstr-lock-{tag}"))
    if work.kind not in _FACTORIES:
        from ktstr.guest.work_more import make_shared as more

        return more(work) or Shared()
    return Shared()
