"""The run phases, tying host, protocol, evaluate and report together.

``guest`` boots a VM for a job and drives its frame stream; ``judge``
plans the watchdog, judges the run and writes ``result.json``.
"""

from ktstr.runner.boot import BootRequest, GuestRun, prepare
from ktstr.runner.guest import run_guest
from ktstr.runner.judge import (
    SchedulerRun,
    check_payload_tools,
    execute,
    execute_job,
    run_scenario,
    scenario_job,
    scheduler_binary,
    with_scheduler,
)

__all__ = [
    "BootRequest",
    "GuestRun",
    "SchedulerRun",
    "check_payload_tools",
    "execute",
    "execute_job",
    "prepare",
    "run_guest",
    "run_scenario",
    "scenario_job",
    "scheduler_binary",
    "with_scheduler",
]
