# Copyright (c) mmddaq contributors. All rights reserved.
"""Fail before training, not at the first validation, on missing images."""
import os.path as osp
from typing import List

from mmengine.hooks import Hook

from mmddaq.registry import HOOKS


def missing_image_files(dataset) -> List[str]:
    """Local ``img_path`` entries of ``dataset`` that are not files.

    Datasets without ``get_data_info`` or without image paths (e.g. the
    in-memory digits) have nothing to check; remote paths (``s3://``) are
    skipped.

    Args:
        dataset: An MMEngine-style dataset.

    Returns:
        list[str]: The missing paths.
    """
    if not hasattr(dataset, 'get_data_info'):
        return []
    missing = []
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        path = info.get('img_path') if isinstance(info, dict) else None
        if isinstance(path, str) and '://' not in path and \
                not osp.isfile(path):
            missing.append(path)
    return missing


@HOOKS.register_module()
class EvalDataCheckHook(Hook):
    """Check that the validation images exist before training starts.

    Data-free training reads no data, so a wrong ``data_root`` or
    ``data_prefix`` of the validation set would otherwise only show at the
    first validation, after many iterations (a missing annotation file
    already fails when the dataset is built). This hook lists the missing
    images in ``before_train``, before layer importance or any iteration.

    Args:
        max_listed (int): How many missing paths the error shows.
            Defaults to 3.
    """

    priority = 'VERY_HIGH'

    def __init__(self, max_listed: int = 3) -> None:
        self.max_listed = max_listed

    def before_train(self, runner) -> None:
        loop = runner.val_loop
        dataloader = getattr(loop, 'dataloader', None)
        dataset = getattr(dataloader, 'dataset', None)
        if dataset is None:
            return
        missing = missing_image_files(dataset)
        if missing:
            root = getattr(dataset, 'data_root', None)
            raise FileNotFoundError(
                f'{len(missing)} of {len(dataset)} validation images do not '
                f'exist, e.g. {missing[:self.max_listed]}. Check data_root '
                f'({root!r}) and data_prefix of val_dataloader.dataset. '
                'Nothing was trained.')
