"""Early, clear errors about paths a run will write to."""
import os
import os.path as osp


def check_work_dir(work_dir: str) -> None:
    """Make sure ``work_dir`` exists (or can be made) and is writable.

    Args:
        work_dir (str): The run's work directory.
    """
    path = osp.abspath(work_dir)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise PermissionError(
            f'cannot create the work dir "{path}": {e.strerror}') from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f'the work dir "{path}" is not writable')
