"""Shorten sched_ext's watchdog from the host, so a stall is caught in time.

The kernel's runnable-task watchdog waits up to 30 s (the scheduler's
``timeout_ms``), longer than most tests. After the scheduler attaches, ktstr
writes two words of guest memory:

1. ``scx_watchdog_timestamp`` (when the watchdog work last checked in) is
   moved forward to when that work is next due (last check + old timeout/2,
   or now if it is overdue). ``scx_tick()`` kills the scheduler when the
   work has not checked in for one timeout; with the shorter timeout and
   the old timestamp it would fire before the work - still queued for the
   old half period - ran once.
2. The timeout (``scx_watchdog_timeout`` on 6.12, ``scx_root->
   watchdog_timeout`` on 7.x), in jiffies.

From the work's next run on, it re-arms every new timeout/2 and kills a
scheduler whose runnable tasks wait longer than the new timeout. A timeout
is only ever shortened.
"""

from __future__ import annotations

from dataclasses import dataclass

from ktstr.inspect.reader import Reader


@dataclass(frozen=True, slots=True)
class WatchdogWrite:
    where: str  # the variable written
    old_jiffies: int
    new_jiffies: int
    hz: int
    timestamp_moved: int = 0  # jiffies the check-in timestamp moved forward
    skipped: str = ""  # why nothing was written

    @property
    def new_s(self) -> float:
        return self.new_jiffies / self.hz


def shorten_watchdog(reader: Reader, root: int, seconds: float, jiffies: int) -> WatchdogWrite:
    lay = reader.layout
    if root and "sch.watchdog_timeout" in lay.offsets:
        where, addr = "scx_root->watchdog_timeout", root + lay.offsets["sch.watchdog_timeout"]
    elif "watchdog_timeout" in lay.symbols:
        where, addr = "scx_watchdog_timeout", lay.symbols["watchdog_timeout"]
    else:
        return WatchdogWrite("", 0, 0, lay.hz, skipped="this kernel has no watchdog timeout")
    new = max(1, round(seconds * lay.hz))
    old = reader.u64(addr)
    if new >= old:
        return WatchdogWrite(where, old, old, lay.hz, skipped=f"already {old / lay.hz:g}s")
    moved = 0
    if "watchdog_timestamp" in lay.symbols:
        ts_addr = lay.symbols["watchdog_timestamp"]
        ts = reader.u64(ts_addr)
        due = max(ts + old // 2, jiffies)
        if due > ts:
            reader.write_u64(ts_addr, due)
            moved = due - ts
    reader.write_u64(addr, new)
    return WatchdogWrite(where, old, new, lay.hz, timestamp_moved=moved)
