from .digits import DigitsDataset, load_digits_split
from .shapes import (SHAPES_CLASSES, SHAPES_TUNE_OPTIONS, ensure_shapes,
                     generate_shapes, shapes_metainfo)

__all__ = [
    'DigitsDataset', 'load_digits_split', 'SHAPES_CLASSES',
    'SHAPES_TUNE_OPTIONS', 'ensure_shapes',
    'generate_shapes',
    'shapes_metainfo'
]
