from .generator import Generator

__all__ = ['Generator']
