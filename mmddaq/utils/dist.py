"""Collectives shared by the data-parallel pieces of mmddaq.

Every function here is a no-op in a single process, so the same code runs
with and without a launcher.
"""
import datetime
import os
from collections import OrderedDict
from typing import Callable, Iterable, List, Optional

import torch
import torch.distributed as torch_dist


def world_size(group=None) -> int:
    """Processes in ``group`` (1 without an initialised process group)."""
    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return 1
    return torch_dist.get_world_size(group)


def _buckets(tensors: Iterable[torch.Tensor],
             cap_bytes: int) -> List[List[torch.Tensor]]:
    """Group tensors by (device, dtype), then cut groups at ``cap_bytes``."""
    groups: 'OrderedDict[tuple, List[List[torch.Tensor]]]' = OrderedDict()
    sizes = {}
    for t in tensors:
        key = (t.device, t.dtype)
        nbytes = t.numel() * t.element_size()
        if key not in groups or sizes[key] + nbytes > cap_bytes:
            groups.setdefault(key, []).append([])
            sizes[key] = 0
        groups[key][-1].append(t)
        sizes[key] += nbytes
    return [b for bs in groups.values() for b in bs if b]


def coalesced_(tensors: Iterable[torch.Tensor],
               collective: Callable[[torch.Tensor], None],
               cap_mb: float = 25.) -> None:
    """Apply an in-place ``collective`` to ``tensors``, a few at a time.

    Tensors of one device and dtype are flattened into buckets of at most
    ``cap_mb`` MiB (one larger tensor makes a bucket of its own), the
    collective runs once per bucket and the results are copied back. Every
    rank must pass tensors of the same shapes in the same order.

    Args:
        tensors (Iterable[Tensor]): Tensors to update in place.
        collective (Callable): E.g. ``lambda t: dist.all_reduce(t)``.
        cap_mb (float): Bucket size in MiB. Defaults to 25.
    """
    for bucket in _buckets(tensors, int(cap_mb * 1024 * 1024)):
        flat = torch.cat([t.detach().reshape(-1) for t in bucket])
        collective(flat)
        offset = 0
        for t in bucket:
            n = t.numel()
            t.detach().copy_(flat[offset:offset + n].view_as(t))
            offset += n


def all_reduce_mean_(tensors: Iterable[torch.Tensor],
                     group=None,
                     cap_mb: float = 25.) -> None:
    """Average floating-point ``tensors`` in place across ranks."""
    n = world_size(group)
    if n == 1:
        return

    def mean(flat):
        torch_dist.all_reduce(flat, group=group)
        flat.div_(n)

    coalesced_(tensors, mean, cap_mb)


def broadcast_(tensors: Iterable[torch.Tensor],
               src: int = 0,
               group=None,
               cap_mb: float = 25.) -> None:
    """Overwrite ``tensors`` in place with those of rank ``src``."""
    if world_size(group) == 1:
        return
    coalesced_(
        tensors, lambda flat: torch_dist.broadcast(flat, src, group=group),
        cap_mb)


def init_dist_without_gpu(launcher: str,
                          dist_cfg: Optional[dict] = None) -> bool:
    """Start the process group of a ``torchrun`` job on a machine without GPU.

    MMEngine's ``pytorch`` launcher binds each process to a CUDA device
    first, which fails where there is none. This starts the ``gloo`` group
    from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``) instead; the runner then finds it initialised and
    skips its own start. With a GPU, or for other launchers, it does
    nothing and MMEngine proceeds as usual.

    Args:
        launcher (str): The ``--launcher`` value.
        dist_cfg (dict, optional): ``env_cfg.dist_cfg`` of the config; only
            its ``timeout`` (seconds) is used, the backend is ``gloo``.

    Returns:
        bool: Whether a process group was started here.
    """
    if launcher != 'pytorch' or torch.cuda.is_available() or \
            torch_dist.is_initialized():
        return False
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(
            f'--launcher pytorch needs the environment that torchrun sets; '
            f'{missing} are missing. Start the job with tools/dist_train.sh '
            'or torchrun --nproc_per_node=N tools/train.py ... --launcher '
            'pytorch.')
    kwargs = {}
    timeout = (dist_cfg or {}).get('timeout')
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    torch_dist.init_process_group(backend='gloo', **kwargs)
    return True


def add_launcher_args(parser) -> None:
    """``--launcher`` and ``--local-rank``, as the OpenMMLab tools take."""
    parser.add_argument('--launcher',
                        choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_launcher_args(parser, argv=None):
    """Parse ``argv``; export ``LOCAL_RANK`` when the launcher did not."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args
