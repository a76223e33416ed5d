"""Pressing Cancel in the middle of a job, as the tests of every streaming method do."""

import pytest

from engine.core.errors import JobCancelled
from engine.core.jobs import Frame


def frames_before_cancel(job, cancel, after: int = 1) -> int:
    """Drive ``job``, cancel once ``after`` frames have arrived, and require that the job then
    ends in JobCancelled (so no result); returns how many frames it yielded in all."""
    frames = 0
    with pytest.raises(JobCancelled):
        for event in job:
            if isinstance(event, Frame):
                frames += 1
                if frames == after:
                    cancel.cancel()
    return frames
