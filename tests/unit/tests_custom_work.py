"""A Custom work function for test_workers_local (called once per iteration)."""

from ktstr.guest.work_types import spin


def unit(ctx: object) -> None:
    spin(100)
