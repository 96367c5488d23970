"""More work kinds: request/response, wake-ups of many, queues, thread and
process churn, timers, priority-inheriting locks, memory, interactive and
SCHED_DEADLINE tasks. Each reports to the worker's Telemetry as
``work_types`` does: ``tick`` per unit (time spent blocked on purpose
excluded from gaps) and ``latency`` for the delay it exists to measure
(docs/scenarios.md lists what that is for each kind)."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import select
import signal
import struct
import threading
import time
from collections.abc import Callable

from ktstr.guest.work_types import (
    MSG,
    Ctx,
    Shared,
    Step,
    _futex,
    _libc,
    _ns,
    _sleep,
    fork_and_wait,
    receive_msg,
    send_msg,
    spin,
    stop_deferred,
)
from ktstr.spec.work import Work, WorkKind

_FUTEX_LOCK_PI, _FUTEX_UNLOCK_PI = 6, 7
_SYS_SCHED_SETATTR = 314  # x86_64
_SCHED_DEADLINE = 6
_INT_MAX = 0x7FFFFFFF


def busy(ns: int) -> None:
    """Burn CPU for ``ns`` of wall time (a unit of 'work')."""
    end = _ns() + ns
    while _ns() < end:
        spin(200)


def _ms(ms: float) -> int:
    return int(ms * 1e6)


def _request_response(ctx: Ctx) -> Step:
    """Role 0 sends a request and records its latency (send to reply); role 1
    wakes on it, records its wake-up latency, works ``burst_ms``, replies."""
    assert ctx.shared.pipes is not None
    (ab_r, ab_w), (ba_r, ba_w) = ctx.shared.pipes
    rd, wr = (ba_r, ab_w) if ctx.role == 0 else (ab_r, ba_w)
    work = _ms(ctx.work.burst_ms)

    def step() -> None:
        t = _ns()
        if ctx.role == 0:
            send_msg(wr)
            data = os.read(rd, MSG.size)
            now = _ns()
            ctx.tel.latency(now - t)
            if len(data) == MSG.size:
                ctx.tel.place(MSG.unpack(data)[1])
            ctx.tel.tick(blocked_ns=now - t)
            return
        blocked = receive_msg(ctx.tel, rd)
        busy(work)
        send_msg(wr)
        ctx.tel.tick(blocked_ns=blocked)

    return step


def _herd(ctx: Ctx) -> Step:
    """Worker 0 bumps a generation word every ``period_ms`` and wakes every
    waiter at once; each waiter records now minus the wake's stamp."""
    page = ctx.shared.page
    assert page is not None
    gen = ctypes.c_int32.from_buffer(page, 0)
    stamp = ctypes.c_int64.from_buffer(page, 8)
    addr = ctypes.addressof(gen)
    period, work = ctx.work.period_ms / 1000, _ms(ctx.work.burst_ms)

    def wake() -> None:
        slept = _sleep(ctx, period)
        stamp.value = _ns()
        gen.value = (gen.value + 1) & _INT_MAX
        _futex(addr, 1, _INT_MAX)  # FUTEX_WAKE all
        busy(work)
        ctx.tel.tick(blocked_ns=slept)

    def wait() -> None:
        t, seen = _ns(), gen.value
        while gen.value == seen:
            _futex(addr, 0, seen, 100_000_000)  # 100 ms, so a stop is noticed
        now = _ns()
        ctx.tel.latency(max(0, now - stamp.value))
        busy(work)
        ctx.tel.tick(blocked_ns=now - t)

    return wake if ctx.worker == 0 else wait


def _producer_consumer(ctx: Ctx) -> Step:
    """A bounded queue (a packet pipe): producers stamp and enqueue items,
    consumers dequeue them and record their time in the queue."""
    assert ctx.shared.pipes is not None
    rd, wr = ctx.shared.pipes[0]
    work = _ms(ctx.work.burst_ms)

    def produce() -> None:
        busy(work)
        t = _ns()
        while True:
            select.select((), (wr,), ())  # waits while the queue is full; a stop ends it
            # An item is counted iff it was enqueued: a stop between the two
            # left consumers counting one more than their producer.
            with stop_deferred():
                try:
                    os.write(wr, struct.pack("<q", _ns()))  # non-blocking
                except BlockingIOError:
                    continue  # another producer took the room
                ctx.tel.tick(blocked_ns=_ns() - t)
                return

    def consume() -> None:
        t = _ns()
        data = os.read(rd, 8)
        now = _ns()
        if len(data) == 8:
            ctx.tel.latency(now - struct.unpack("<q", data)[0])
        busy(work)
        ctx.tel.tick(blocked_ns=now - t)

    return produce if ctx.worker < ctx.work.producers else consume


def _thread_storm(ctx: Ctx) -> Step:
    """A short-lived thread per unit: its latency is creation to first run."""
    work = _ms(ctx.work.burst_ms)
    started = [0]

    def body() -> None:
        started[0] = _ns()
        busy(work)

    def step() -> None:
        t = _ns()
        th = threading.Thread(target=body, daemon=True)
        th.start()
        th.join()
        ctx.tel.latency(max(0, started[0] - t))
        ctx.tel.tick(blocked_ns=_ns() - t)

    return step


def _fork_exec(ctx: Ctx) -> Step:
    """fork + exec of /bin/true and the wait for it: process churn."""
    true = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"

    def child() -> None:
        try:
            os.execv(true, ["true"])
        finally:
            os._exit(127)

    return lambda: fork_and_wait(ctx, child)


def _timer_periodic(ctx: Ctx) -> Step:
    """Wake at every multiple of ``period_ms`` (absolute), work ``burst_ms``;
    the latency is how late each wake-up came. Missed periods are skipped."""
    period, work = _ms(ctx.work.period_ms), _ms(ctx.work.burst_ms)
    nxt = [_ns() + period]

    def step() -> None:
        t = _ns()
        if nxt[0] > t:
            time.sleep((nxt[0] - t) / 1e9)
        now = _ns()
        ctx.tel.latency(max(0, now - nxt[0]))
        busy(work)
        nxt[0] += period
        if nxt[0] < _ns():
            nxt[0] = _ns() + period - (_ns() - nxt[0]) % period
        ctx.tel.tick(blocked_ns=now - t)

    return step


def _pi_lock(ctx: Ctx) -> Step:
    """A convoy on one priority-inheriting futex (FUTEX_LOCK_PI), held for
    ``burst_ms``; the latency is the wait to acquire. The stop signal is held
    back while the lock is held, so no worker dies holding it."""
    page = ctx.shared.page
    assert page is not None
    addr = ctypes.addressof(ctypes.c_uint32.from_buffer(page, 0))
    hold = _ms(ctx.work.burst_ms)
    usr1 = {signal.SIGUSR1}

    def lock() -> None:
        while True:
            deadline_ns = time.time_ns() + 100_000_000  # absolute CLOCK_REALTIME for LOCK_PI
            ret = _futex(addr, _FUTEX_LOCK_PI, 0, deadline_ns)
            if ret == 0:
                return
            err = ctypes.get_errno()
            if err not in (errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN, errno.ESRCH,
                           errno.EOWNERDEAD):  # fmt: skip
                raise OSError(err, f"FUTEX_LOCK_PI: {os.strerror(err)}")
            old = signal.pthread_sigmask(signal.SIG_UNBLOCK, usr1)  # a stop may land here
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def step() -> None:
        with stop_deferred():
            t = _ns()
            lock()
            got = _ns()
            busy(hold)
            _futex(addr, _FUTEX_UNLOCK_PI, 0)
        ctx.tel.latency(got - t)
        ctx.tel.tick(blocked_ns=got - t)

    return step


_SYS_GET_MEMPOLICY = 239  # x86_64
_MPOL_F_NODE_ADDR = 1 | 2  # MPOL_F_NODE | MPOL_F_ADDR: the node of the page at addr


def page_node(buf: bytearray) -> int:
    """The NUMA node of ``buf``'s first page (-1 if the kernel will not say)."""
    node = ctypes.c_int(-1)
    addr = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    rc = _libc.syscall(_SYS_GET_MEMPOLICY, ctypes.byref(node), None, 0,
                       ctypes.c_void_p(addr), _MPOL_F_NODE_ADDR)  # fmt: skip
    return node.value if rc == 0 else -1


def _memory_bw(ctx: Ctx) -> Step:
    """Copy ``size_kb`` from one buffer to another; a unit is a MiB copied,
    so the work rate is bandwidth (MiB/s). The source buffer's node (first
    touch: where the worker started) is its memory node."""
    size = ctx.work.size_kb * 1024
    src_buf = bytearray(b"\x5a" * size)
    ctx.tel.mem_node = page_node(src_buf)
    src, dst = memoryview(src_buf), memoryview(bytearray(size))
    mib = max(1, size >> 20)

    def step() -> None:
        dst[:] = src
        ctx.tel.tick(units=mib)

    return step


def _page_faults(ctx: Ctx) -> Step:
    """Map ``size_kb`` of anonymous memory, touch every page, unmap: a unit
    is a page faulted in."""
    size, page = ctx.work.size_kb * 1024, mmap.PAGESIZE

    def step() -> None:
        mm = mmap.mmap(-1, size)
        for off in range(0, size, page):
            mm[off] = 1
        mm.close()
        ctx.tel.tick(units=size // page)

    return step


def _interactive(ctx: Ctx) -> Step:
    """Sleep ``sleep_ms``, then work ``burst_ms``: the latency is how late
    each wake-up came, the number an interactive task feels."""
    work, sleep_s = _ms(ctx.work.burst_ms), ctx.work.sleep_ms / 1000

    def step() -> None:
        slept = _sleep(ctx, sleep_s)
        busy(work)
        ctx.tel.tick(blocked_ns=slept)

    return step


def _deadline(ctx: Ctx) -> Step:
    """SCHED_DEADLINE with runtime ``burst_ms`` every ``period_ms``: work most
    of the runtime, yield to the next period; the latency is how late into
    its period the work started."""
    runtime, period = _ms(ctx.work.burst_ms), _ms(ctx.work.period_ms)
    attr = struct.pack("<IIqiIQQQ", 48, _SCHED_DEADLINE, 0, 0, 0, runtime, period, period)
    if _libc.syscall(_SYS_SCHED_SETATTR, 0, ctypes.c_char_p(attr), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sched_setattr(SCHED_DEADLINE): {os.strerror(err)}")
    base = _ns()

    def step() -> None:
        now = _ns()
        ctx.tel.latency((now - base) % period)
        busy(runtime * 3 // 4)
        done = _ns()
        os.sched_yield()  # a deadline task's yield waits for its next period
        ctx.tel.tick(blocked_ns=_ns() - done)

    return step


FACTORIES: dict[WorkKind, Callable[[Ctx], Step]] = {
    WorkKind.REQUEST_RESPONSE: _request_response,
    WorkKind.THUNDERING_HERD: _herd,
    WorkKind.PRODUCER_CONSUMER: _producer_consumer,
    WorkKind.THREAD_STORM: _thread_storm,
    WorkKind.FORK_EXEC: _fork_exec,
    WorkKind.TIMER_PERIODIC: _timer_periodic,
    WorkKind.PI_LOCK: _pi_lock,
    WorkKind.MEMORY_BW: _memory_bw,
    WorkKind.PAGE_FAULTS: _page_faults,
    WorkKind.INTERACTIVE: _interactive,
    WorkKind.DEADLINE: _deadline,
}


def make_shared(work: Work) -> Shared | None:
    """What a pair or a cgroup of these kinds shares, created before fork."""
    if work.kind is WorkKind.REQUEST_RESPONSE:
        return Shared(pipes=(os.pipe(), os.pipe()))
    if work.kind is WorkKind.PRODUCER_CONSUMER:
        r, w = os.pipe2(os.O_DIRECT)  # packets: an 8-byte item is never split
        os.set_blocking(w, False)  # producers wait in select(), where a stop reaches them
        return Shared(pipes=((r, w), (r, w)))
    if work.kind in (WorkKind.THUNDERING_HERD, WorkKind.PI_LOCK):
        return Shared(page=mmap.mmap(-1, mmap.PAGESIZE, mmap.MAP_SHARED))
    return None
