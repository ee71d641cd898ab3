"""Diversity of a generated batch: a remedy for mode collapse."""
from typing import Any

import torch

from mmddaq.utils.nested import flatten_tensors


def pairwise_diversity_loss(features: Any, eps: float = 1e-4) -> torch.Tensor:
    """``-mean_{i<j} log(d_ij + eps)`` over the pairs of a batch.

    ``d_ij`` is the squared distance of samples ``i`` and ``j`` averaged
    over every tensor in ``features`` (each ``(N, ...)``, e.g. the FP
    model's tap outputs on a generated batch), each tensor's distance
    divided by its (detached) mean square, so every tensor counts alike
    whatever its scale. Matching batch BN statistics alone lets a generator
    draw one image for every noise vector; this term grows without bound
    as two samples become identical, and only slowly (logarithmically) as
    they move apart, so it keeps samples distinct without ruling the
    generator.

    Args:
        features: Tensors (nested in lists, tuples or dicts) whose first
            dimension is the batch.
        eps (float): Keeps the loss finite for identical samples.

    Returns:
        Tensor: The scalar loss (0 for a batch of one sample).
    """
    tensors = flatten_tensors(features)
    if not tensors:
        raise ValueError('pairwise_diversity_loss got no tensors')
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError('pairwise_diversity_loss needs one row per sample '
                         'in every tensor, got first dimensions '
                         f'{sorted({t.shape[0] for t in tensors})}')
    if n < 2:
        return tensors[0].sum() * 0.
    dist = 0.
    for t in tensors:
        f = t.float().reshape(n, -1)
        sq = (f * f).sum(dim=1)
        gram = f @ f.t()
        d = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0.)
        scale = sq.detach().mean() + 1e-12
        dist = dist + d / scale
    dist = dist / len(tensors)
    i, j = torch.triu_indices(n, n, offset=1, device=dist.device)
    return -torch.log(dist[i, j] + eps).mean()
