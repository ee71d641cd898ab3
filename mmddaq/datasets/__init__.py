from .digits import DigitsDataset, load_digits_split

__all__ = ['DigitsDataset', 'load_digits_split']
