# Copyright (c) mmddaq contributors. All rights reserved.
"""Safe (``weights_only``) loading of MMEngine checkpoints.

Since PyTorch 2.6, :func:`torch.load` defaults to ``weights_only=True``.
MMEngine 0.10.x calls :func:`torch.load` without that argument, so loading a
checkpoint written by MMEngine's ``Runner`` / ``CheckpointHook`` /
``save_checkpoint`` fails with ``UnpicklingError: Weights only load failed``:
such checkpoints hold numpy scalars and arrays, ``HistoryBuffer`` objects of
the message hub and a few other harmless objects that are not on PyTorch's
default allow-list.

This module fixes that without switching the safety check off:

* :func:`register_safe_globals` allow-lists exactly the extra globals that
  MMEngine checkpoints contain (found empirically, see the module tests).
* :func:`install_safe_checkpoint_loading` also replaces MMEngine's loader for
  local files with :func:`load_from_local_safe`, which loads with
  ``weights_only=True`` and turns a refusal into an
  :class:`UnsafeCheckpointError` that names the file and the global.
"""
import os.path as osp
import pickle
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    'UnsafeCheckpointError', 'register_safe_globals',
    'install_safe_checkpoint_loading', 'load_from_local_safe',
    'load_checkpoint_safe'
]

MapLocation = Optional[Union[str, torch.device, Callable, Dict[str, str]]]
SafeGlobal = Tuple[Any, str]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint was refused because it holds objects unsafe to unpickle.

    Args:
        filename (str): Path of the refused checkpoint.
        global_name (str, optional): Dotted name of the first global that is
            not allow-listed, if it could be identified. Defaults to None.
        detail (str, optional): The error reported by :func:`torch.load`.
            Defaults to None.
        hint (str, optional): How to load the file anyway if it is trusted.
            Defaults to None, which suggests
            :func:`torch.serialization.add_safe_globals`.
    """

    def __init__(self,
                 filename: str,
                 global_name: Optional[str] = None,
                 detail: Optional[str] = None,
                 hint: Optional[str] = None) -> None:
        self.filename = filename
        self.global_name = global_name
        self.detail = detail
        shown = global_name if global_name is not None else '<unidentified>'
        if hint is None:
            hint_arg = global_name if global_name is not None else '...'
            hint = ('If you trust this file, allow-list the global with '
                    f'`torch.serialization.add_safe_globals([{hint_arg}])` '
                    'before loading it.')
        msg = (f'Refused to load checkpoint "{filename}": it contains '
               'objects that are not plain weights or OpenMMLab metadata '
               f'(disallowed global: {shown}), so it was refused for safety. '
               f'{hint}')
        if detail:
            msg += f'\nDetails from torch.load: {detail}'
        super().__init__(msg)


# --------------------------------------------------------------------------
# allow-list
# --------------------------------------------------------------------------

# numpy dtype characters whose dtype classes may be rebuilt. Both the
# sized names (e.g. ``Int64DType``) and the C names (e.g. ``LongLongDType``)
# are covered. Object, void and datetime dtypes are deliberately absent.
_NUMPY_DTYPE_CHARS = '?bBhHiIlLqQefdgFDGUS'

# Attributes that ``builtins.getattr`` may resolve while unpickling. Pickle
# protocol 2 (the one used by ``torch.save``) stores functions with a nested
# qualified name as ``getattr(<class>, <name>)``. MMEngine checkpoints hold:
#   * ``HistoryBuffer.min/max/current/mean`` (``statistics_methods`` saved
#     by ``HistoryBuffer.__getstate__``), present in every Runner checkpoint;
#   * ``OneCycleParamScheduler._annealing_cos/_annealing_linear``
#     (``anneal_func`` in the state dict of the one-cycle schedulers).
# Filled lazily by ``_getattr_table``; keys are compared by identity.
_GETATTR_TABLE: Optional[Dict[Any, Tuple[str, ...]]] = None

_SAFE_GLOBALS: Optional[List[SafeGlobal]] = None


def _getattr_table() -> Dict[Any, Tuple[str, ...]]:
    """Build the table of attributes :func:`_restricted_getattr` resolves.

    Returns:
        dict: Maps a class to the attribute names that may be looked up on it.
    """
    global _GETATTR_TABLE
    if _GETATTR_TABLE is None:
        from mmengine.logging.history_buffer import HistoryBuffer
        from mmengine.optim.scheduler.param_scheduler import \
            OneCycleParamScheduler
        _GETATTR_TABLE = {
            HistoryBuffer: ('min', 'max', 'current', 'mean'),
            OneCycleParamScheduler: ('_annealing_cos', '_annealing_linear'),
        }
    return _GETATTR_TABLE


def _restricted_getattr(obj: Any, name: str) -> Any:
    """A ``getattr`` that only resolves the attributes in a fixed table.

    It is allow-listed under the name ``builtins.getattr`` instead of the
    real :func:`getattr`, which would let a pickle reach any attribute of any
    allow-listed object.

    Args:
        obj (Any): The object (a class) to look the attribute up on.
        name (str): The attribute name.

    Returns:
        Any: ``getattr(obj, name)`` when the pair is allowed.
    """
    allowed = None
    for cls, names in _getattr_table().items():
        if obj is cls:
            allowed = names
            break
    if allowed is None or not isinstance(name, str) or name not in allowed:
        owner = getattr(obj, '__qualname__', type(obj).__qualname__)
        raise pickle.UnpicklingError(
            f'Unsupported global: GLOBAL getattr({owner}, {name!r}) was not '
            'an allowed global by default.')
    return getattr(obj, name)


def _numpy_multiarray_funcs() -> Tuple[Callable, Callable]:
    """Get numpy's ``scalar`` and ``_reconstruct`` pickle helpers.

    Returns:
        tuple: ``(scalar, _reconstruct)`` from ``numpy._core.multiarray``
        (numpy 2.x) or ``numpy.core.multiarray`` (numpy 1.x).
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # older numpy 1.x has no ``numpy._core``
        from numpy.core import multiarray  # type: ignore
    return multiarray.scalar, multiarray._reconstruct


def _build_safe_globals() -> List[SafeGlobal]:
    """Collect the globals needed by MMEngine checkpoints.

    Returns:
        list[tuple]: ``(object, dotted name in the pickle)`` pairs suitable
        for :func:`torch.serialization.add_safe_globals`.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.optim.scheduler.param_scheduler import \
        OneCycleParamScheduler

    scalar, reconstruct = _numpy_multiarray_funcs()
    safe: List[SafeGlobal] = []
    # numpy scalars (``np.float64(1.)``) and arrays. Checkpoints written with
    # numpy 2.x use ``numpy._core``; those written with 1.x ``numpy.core``.
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        safe.append((scalar, f'{mod}.scalar'))
        safe.append((reconstruct, f'{mod}._reconstruct'))
    safe.append((np.ndarray, 'numpy.ndarray'))
    safe.append((np.dtype, 'numpy.dtype'))
    # The dtype classes never appear as a GLOBAL, but unpickling a dtype
    # calls BUILD on an instance of them, which torch only permits for
    # allow-listed types.
    seen = set()
    for char in _NUMPY_DTYPE_CHARS:
        cls = type(np.dtype(char))
        if cls in seen:
            continue
        seen.add(cls)
        safe.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    # MMEngine objects.
    safe.append((HistoryBuffer, 'mmengine.logging.history_buffer.'
                 'HistoryBuffer'))
    safe.append(
        (OneCycleParamScheduler,
         'mmengine.optim.scheduler.param_scheduler.OneCycleParamScheduler'))
    # Restricted stand-in for ``getattr`` (see ``_GETATTR_TABLE``).
    safe.append((_restricted_getattr, 'builtins.getattr'))
    return safe


def register_safe_globals() -> List[str]:
    """Allow-list the globals found in checkpoints saved by MMEngine.

    These are numpy scalars, arrays and dtypes (numpy 2.x names and their
    numpy 1.x aliases), ``mmengine.logging.history_buffer.HistoryBuffer``,
    ``OneCycleParamScheduler`` and a restricted ``getattr`` that only
    resolves the few class attributes such checkpoints reference. Nothing
    else is allowed; in particular no generic callable. Calling it more
    than once is harmless.

    Returns:
        list[str]: The dotted names that were allow-listed.
    """
    global _SAFE_GLOBALS
    if _SAFE_GLOBALS is None:
        _SAFE_GLOBALS = _build_safe_globals()
    # ``add_safe_globals`` adds to a set, so repeating it is a no-op; it is
    # still called every time in case the allow-list was cleared meanwhile.
    torch.serialization.add_safe_globals(list(_SAFE_GLOBALS))
    return [name for _, name in _SAFE_GLOBALS]


# --------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------

_ANSI_RE = re.compile(r'\x1b\[[0-9;]*m')
_GLOBAL_PATTERNS = (
    re.compile(r'GLOBAL (\S+) was not an allowed global'),
    re.compile(r'GLOBAL (getattr\(.*?\)) was not an allowed global'),
    re.compile(r'unsupported GLOBAL (\S+) whose module'),
    re.compile(r"Can only build .*? but got <class '([^']+)'>"),
    re.compile(r'Can only create new object .*? but got '
               r"(?:<class ')?([^'>\s]+)"),
    re.compile(r'reduce for unrecognized function (.+?)(?: which belongs|$)',
               re.MULTILINE),
)


def _find_refused_global(message: str) -> Optional[str]:
    """Extract the refused global from a weights-only error message.

    Args:
        message (str): Message of the ``UnpicklingError`` from torch.

    Returns:
        str, optional: The dotted name of the global, or None if unknown.
    """
    candidates = []
    for pattern in _GLOBAL_PATTERNS:
        match = pattern.search(message)
        if match is not None:
            candidates.append((match.start(), match.group(1)))
    if not candidates:
        return None
    # Prefer the longest match at the earliest position.
    candidates.sort(key=lambda c: (c[0], -len(c[1])))
    name = candidates[0][1].strip()
    if name.isidentifier():
        # torch strips ``builtins.`` from builtin names in its message.
        return f'builtins.{name}'
    return name


def _is_weights_only_error(message: str) -> bool:
    """Whether an ``UnpicklingError`` comes from the weights-only check.

    Args:
        message (str): The error message.

    Returns:
        bool: True if torch refused the pickle as not weights-only.
    """
    return 'Weights only load failed' in message or \
        _find_refused_global(message) is not None


def _special_hint(message: str, global_name: Optional[str]) -> Optional[str]:
    """Return a hint for refusals that ``add_safe_globals`` cannot lift.

    Args:
        message (str): Message of the ``UnpicklingError`` from torch.
        global_name (str, optional): The refused global, if known.

    Returns:
        str, optional: The hint, or None to use the default one.
    """
    if re.search(r'whose module \S+ is blocked', message):
        return ('Its module is blocked by torch, so '
                '`torch.serialization.add_safe_globals` cannot allow-list it; '
                'only load it with `torch.load(..., weights_only=False)` if '
                'you fully trust the file and know why it needs this.')
    if global_name is not None and global_name.startswith('getattr('):
        return ('Attribute look-ups with `getattr` are only allowed for a '
                'fixed set of MMEngine class attributes; if you trust this '
                'file, load it with `torch.load(..., weights_only=False)`.')
    return None


def load_from_local_safe(filename: str, map_location: MapLocation = None):
    """Load a local checkpoint with ``torch.load(..., weights_only=True)``.

    This replaces MMEngine's ``load_from_local`` as the
    ``CheckpointLoader`` scheme for local paths (prefix ``''``).

    Args:
        filename (str): Local checkpoint path (``~`` is expanded).
        map_location (str | torch.device | callable | dict, optional): Same
            as :func:`torch.load`. Defaults to None.

    Returns:
        dict or OrderedDict: The loaded checkpoint.

    Raises:
        FileNotFoundError: If ``filename`` is not an existing file.
        UnsafeCheckpointError: If the checkpoint holds globals that are not
            allow-listed.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch.load(
            filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        message = _ANSI_RE.sub('', str(err))
        if not _is_weights_only_error(message):
            raise
        global_name = _find_refused_global(message)
        raise UnsafeCheckpointError(
            filename,
            global_name,
            detail=message,
            hint=_special_hint(message, global_name)) from err


def install_safe_checkpoint_loading() -> None:
    """Make MMEngine load local checkpoints safely on torch >= 2.6.

    Calls :func:`register_safe_globals` and registers
    :func:`load_from_local_safe` as the loader of local paths in
    ``mmengine.runner.CheckpointLoader``, which is used by
    ``mmengine.runner.load_checkpoint``, ``Runner.load_checkpoint``,
    ``Runner.resume`` and ``load_from``. Calling it more than once is
    harmless.
    """
    from mmengine.runner.checkpoint import CheckpointLoader

    register_safe_globals()
    if CheckpointLoader._schemes.get('') is not load_from_local_safe:
        CheckpointLoader.register_scheme(
            prefixes='', loader=load_from_local_safe, force=True)


def load_checkpoint_safe(filename: str,
                         map_location: MapLocation = 'cpu') -> Dict[str, Any]:
    """Load a local checkpoint file safely.

    The allow-list is registered first, so this works without
    :func:`install_safe_checkpoint_loading` having been called.

    Args:
        filename (str): Local checkpoint path.
        map_location (str | torch.device | callable | dict, optional): Same
            as :func:`torch.load`. Defaults to 'cpu'.

    Returns:
        dict: The loaded checkpoint.

    Raises:
        FileNotFoundError: If ``filename`` is not an existing file.
        UnsafeCheckpointError: If the checkpoint holds globals that are not
            allow-listed.
    """
    register_safe_globals()
    return load_from_local_safe(filename, map_location)


def state_dict_mismatch(model: torch.nn.Module, state: dict) -> List[str]:
    """Describe how a checkpoint's ``state_dict`` differs from a model's.

    Args:
        model (nn.Module): The model.
        state (dict): The checkpoint's ``state_dict`` (a ``module.``
            prefix from DDP is ignored).

    Returns:
        list[str]: Empty if keys and tensor shapes match exactly.
    """
    state = {k[7:] if k.startswith('module.') else k: v
             for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f'{k}: checkpoint {tuple(state[k].shape)} vs model '
        f'{tuple(own[k].shape)}' for k in own
        if k in state and isinstance(state[k], torch.Tensor)
        and isinstance(own[k], torch.Tensor)
        and state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing keys {missing[:5]}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected keys '
                        f'{unexpected[:5]}')
    if shapes:
        problems.append(f'{len(shapes)} shape mismatches {shapes[:3]}')
    return problems
