"""The reference trainer and the resume logic other trainers can call (DESIGN §8).

- `train(TrainSpec(...))`: train or resume any registered variant on synthetic data.
- `plan_resume(reg, path, ...)`: match a checkpoint and prepare the state dict (and optimizer
  state) a build loads strictly — or raise `ResumeRefused` with the diff.
- `EXIT_PREEMPTED` (75): the exit code after a SIGTERM/SIGUSR1 checkpoint; requeue the job.
"""

from .loop import COMPLETED, PREEMPTED, UP_TO_DATE, TrainResult, TrainSpec, train
from .resume import PartialLoad, ResumePlan, ResumeRefused, plan_resume
from .signals import EXIT_PREEMPTED

__all__ = [
    "COMPLETED", "EXIT_PREEMPTED", "PREEMPTED", "UP_TO_DATE", "PartialLoad", "ResumePlan", "ResumeRefused",
    "TrainResult", "TrainSpec", "plan_resume", "train",
]
