"""Record what named submodules see in a forward pass, with forward hooks.

The one mechanism behind every loss that reads inside a model: the
discrepancy discriminator's taps record outputs, the BN-statistics
discriminator records each BN input's moments.
"""
import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn


def run_with_hooks(handles: Sequence[Any],
                   run: Callable[[], object]) -> None:
    """Call ``run()`` without autograd, then remove the hook ``handles``
    (also when it fails): a one-off look inside a forward pass."""
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()


def module_output(module: nn.Module, inputs: tuple, output: Any) -> Any:
    """What :class:`OutputRecorder` keeps by default: the output."""
    return output


class OutputRecorder:
    """Keep what named submodules of a model compute, per call.

    Hooks are attached once and stay until :meth:`remove`, but record only
    inside :meth:`recording`; other forward passes of the model (importance
    measurement, visualisation) leave no trace. A submodule called several
    times in one pass (a head shared by all FPN levels) contributes one
    output per call, so each entry is a list.

    Args:
        model (nn.Module): The model to watch.
        names (Sequence[str]): Names of submodules (``model.named_modules``).
        record (Callable, optional): ``record(module, inputs, output)``
            returns what is kept of a call (e.g. the moments of a BN
            layer's input); the output by default.
    """

    def __init__(self, model: nn.Module, names: Sequence[str],
                 record: Optional[Callable] = None) -> None:
        self.names: List[str] = list(names)
        self.record = record or module_output
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
                self.outputs.setdefault(name, []).append(
                    self.record(module, inputs, output))

        return hook

    @contextlib.contextmanager
    def recording(self):
        """Record the outputs of the passes run inside the block.

        Yields:
            dict[str, list]: Filled with name -> recorded values (one per
            call) as the block runs; it keeps them after the block.
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
