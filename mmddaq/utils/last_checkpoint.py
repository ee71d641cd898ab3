# Copyright (c) mmddaq contributors. All rights reserved.
"""Where a run can be resumed from: MMEngine's ``last_checkpoint`` file."""
import os.path as osp
from typing import Optional

__all__ = ['LAST_CHECKPOINT', 'read_last_checkpoint', 'resume_hint']

#: Name of the file in the work dir that points to the latest checkpoint.
LAST_CHECKPOINT = 'last_checkpoint'


def read_last_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``{work_dir}/last_checkpoint`` points to.

    Args:
        work_dir (str): The run's work directory.

    Returns:
        str, optional: The checkpoint path, or None if there is no pointer,
        it is empty or it names a file that does not exist.
    """
    pointer = osp.join(work_dir, LAST_CHECKPOINT)
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        path = f.read().strip()
    return path if path and osp.isfile(path) else None


def resume_hint(work_dir: str) -> str:
    """One sentence telling the user which checkpoint to resume from.

    Args:
        work_dir (str): The run's work directory.

    Returns:
        str: The hint.
    """
    last = read_last_checkpoint(work_dir)
    if last is None:
        return (f'No checkpoint had been saved in "{work_dir}" yet, so '
                'there is nothing to resume from; restart the run.')
    return (f'The last good checkpoint is "{last}" (unchanged); continue '
            f'from it with `tools/train.py CONFIG --resume {last}` '
            f'(or `--resume` with `--work-dir {work_dir}`).')
