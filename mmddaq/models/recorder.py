"""Record intermediate outputs of named submodules with forward hooks."""
import contextlib
from typing import Dict, List, Sequence

from torch import nn


class OutputRecorder:
    """Keep the outputs of named submodules of a model until popped.

    Hooks are attached once and stay until :meth:`remove`, but record only
    inside :meth:`recording`; other forward passes of the model (importance
    measurement, visualisation) leave no trace. A submodule called several
    times in one pass (a head shared by all FPN levels) contributes one
    output per call, so each entry is a list.

    Args:
        model (nn.Module): The model to watch.
        names (Sequence[str]): Names of submodules (``model.named_modules``).
    """

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        self.names: List[str] = list(names)
        self.outputs: Dict[str, list] = {}
        self.enabled = False
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise ValueError(
                f'{type(model).__name__} has no submodule(s) {missing} to '
                'record outputs from.')
        self._handles = [
            modules[n].register_forward_hook(self._make_hook(n))
            for n in self.names
        ]

    def _make_hook(self, name: str):

        def hook(module, inputs, output):
            if self.enabled:
                self.outputs.setdefault(name, []).append(output)

        return hook

    @contextlib.contextmanager
    def recording(self):
        """Record the outputs of the passes run inside the block.

        Yields:
            dict[str, list]: Filled with name -> outputs (one per call) as
            the block runs.
        """
        self.outputs = {}
        self.enabled = True
        try:
            yield self.outputs
        finally:
            self.enabled = False

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []
