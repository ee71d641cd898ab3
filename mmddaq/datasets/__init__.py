from .digits import DigitsDataset, load_digits_split
from .patches import ensure_patches, generate_patches
from .shapes import (ALL_SHAPES_CLASSES, SHAPES_CLASSES, SHAPES_TUNE_OPTIONS,
                     SMALL_SHAPES, ensure_shapes, ensure_small_shapes,
                     generate_shapes, shapes_metainfo, tune_options)

__all__ = [
    'DigitsDataset', 'load_digits_split', 'ALL_SHAPES_CLASSES',
    'SHAPES_CLASSES', 'SHAPES_TUNE_OPTIONS', 'SMALL_SHAPES', 'ensure_patches',
    'ensure_shapes', 'ensure_small_shapes', 'generate_patches',
    'generate_shapes', 'shapes_metainfo', 'tune_options'
]
