"""Reading the kernel log when a scheduler exits before the agent saw it
attached: a death if it was enabled first, a failed attach (which a quirk
may retry) if its init failed."""

from ktstr.guest.sched_ext import enabled_then_disabled

INIT_FAILED = [  # 6.12 scx_central before its kthread is pinned to CPU 0
    'sched_ext: BPF scheduler "central" disabled (runtime error)',
    "sched_ext: central: init from non-central CPU",
]
STALLED = [
    'sched_ext: BPF scheduler "qmap" enabled',
    'sched_ext: BPF scheduler "qmap" disabled (runtime error)',
]


def test_init_failure_is_not_a_death_but_a_stall_after_enable_is():
    assert not enabled_then_disabled(INIT_FAILED)
    assert enabled_then_disabled(STALLED)
    assert not enabled_then_disabled(STALLED[:1])
    assert not enabled_then_disabled(list(reversed(STALLED)))
