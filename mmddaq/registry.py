"""Registries of mmddaq.

They are children of MMEngine's root registries, so configs of any OpenMMLab
project (mmdet, mmpretrain, ...) can build mmddaq components with the scope
prefix ``mmddaq.``, e.g. ``dict(type='mmddaq.DDAQ')``.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import Registry

MODELS = Registry(
    'model',
    parent=MMENGINE_MODELS,
    scope='mmddaq',
    locations=[
        'mmddaq.quantization', 'mmddaq.generators', 'mmddaq.losses',
        'mmddaq.models'
    ])
MODEL_WRAPPERS = Registry(
    'model_wrapper',
    parent=MMENGINE_MODEL_WRAPPERS,
    scope='mmddaq',
    locations=['mmddaq.models'])
DATASETS = Registry(
    'dataset',
    parent=MMENGINE_DATASETS,
    scope='mmddaq',
    locations=['mmddaq.datasets'])
HOOKS = Registry(
    'hook', parent=MMENGINE_HOOKS, scope='mmddaq', locations=['mmddaq.engine'])
LOOPS = Registry(
    'loop', parent=MMENGINE_LOOPS, scope='mmddaq', locations=['mmddaq.engine'])
RUNNERS = Registry(
    'runner',
    parent=MMENGINE_RUNNERS,
    scope='mmddaq',
    locations=['mmddaq.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope='mmddaq',
    locations=['mmddaq.engine'])
# Where post-training calibration and reconstruction samples come from.
SAMPLE_SOURCES = Registry(
    'sample source', scope='mmddaq', locations=['mmddaq.generators'])
# Strategies that rank layers by how much quantization hurts them.
IMPORTANCE = Registry(
    'layer importance', scope='mmddaq', locations=['mmddaq.importance'])
