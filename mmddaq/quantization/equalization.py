"""Per-channel range equalisation of a ResNet's residual streams.

A residual stage adds each block's output to its input, so all its blocks
read and write one tensor, the *stream*; its channels can differ in range
by 5x and more (the frozen-BN RetinaNet's C2: 99.9th percentiles from 1.8
to 9.0), and one per-tensor 4-bit range leaves the quiet channels a few
levels. Scaling stream channel ``c`` by ``1 / s_c`` where it is written
(the scale and shift of every norm whose output joins the stream) and by
``s_c`` where it is read (the input columns of every conv that reads it)
leaves the model's function unchanged (ReLU and max-pooling commute with a
positive per-channel scale) and moves range from the activations into the
weights, whose ranges are per output channel. ``s_c = r_c ** alpha /
w_c ** (1 - alpha)`` with ``r_c`` the channel's range on the sample pool
and ``w_c`` the readers' largest relative weight magnitude on that input
channel (SmoothQuant's migration, applied to a residual stream).
"""
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from mmengine.dist import all_reduce
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mmddaq.registry import MODELS
from mmddaq.utils.nested import flatten_tensors
from mmddaq.utils.recorder import run_with_hooks

Forward = Callable[[nn.Module, torch.Tensor], object]


def _last_norm(block: nn.Module) -> nn.Module:
    """The norm whose output a residual block adds to its input."""
    if getattr(block, 'se_layer', None) is not None or \
            getattr(block, 'after_conv3_plugin_names', None):
        raise ValueError(f'{type(block).__name__} has a layer between its '
                         'last norm and the residual sum (SE / plugin); '
                         'equalisation does not support it')
    name = 'norm2' if type(block).__name__ == 'BasicBlock' else 'norm3'
    norm = getattr(block, name, None)
    if isinstance(norm, _BatchNorm):
        return norm
    raise ValueError(f'{type(block).__name__} is not a ResNet BasicBlock or '
                     'Bottleneck with BatchNorm (norm2 / norm3)')


def _stem_norm(backbone: nn.Module) -> nn.Module:
    """The norm that writes the first stage's stream (stem's last BN)."""
    if getattr(backbone, 'deep_stem', False):
        norms = [m for m in backbone.stem.modules()
                 if isinstance(m, _BatchNorm)]
        if norms:
            return norms[-1]
    norm = getattr(backbone, 'norm1', None)
    if isinstance(norm, _BatchNorm):
        return norm
    raise ValueError('the backbone\'s stem has no BatchNorm to scale')


def stream_writers(backbone: nn.Module, stage: int) -> List[nn.Module]:
    """The norms whose outputs make up a residual stage's stream.

    Args:
        backbone (nn.Module): An mmdet / mmpretrain ``ResNet`` (has
            ``res_layers``).
        stage (int): Index into ``backbone.res_layers``.

    Raises:
        ValueError: The backbone or stage is not of that form.
    """
    names = getattr(backbone, 'res_layers', None)
    if not names or not 0 <= stage < len(names):
        raise ValueError(f'stage {stage}: the backbone has no such residual '
                         'stage (an mmdet / mmpretrain ResNet is needed)')
    blocks = list(getattr(backbone, names[stage]))
    first = blocks[0]
    down = getattr(first, 'downsample', None)
    if down is None:
        if stage:
            # a stage without downsample reads the previous stage's stream:
            # scaling it would change that stage too
            raise ValueError(f'stage {stage} has no downsample: its stream '
                             'continues the previous stage\'s')
        writers = [_stem_norm(backbone)]
    else:
        norm = list(down.children())[-1] if isinstance(
            down, nn.Sequential) else None
        if not isinstance(norm, _BatchNorm):
            raise ValueError(f'stage {stage}: the downsample does not end '
                             'with a BatchNorm')
        writers = [norm]
    return writers + [_last_norm(b) for b in blocks]


def _stream_tensors(model: nn.Module, backbone: nn.Module, stage: int,
                    run: Callable[[], object]) -> Tuple[list, dict]:
    """Run ``model`` once; the stream's tensors and which convs / linear
    layers of ``model`` read them (``{name: layer}``), found by tensor
    identity."""
    blocks = list(getattr(backbone, backbone.res_layers[stage]))
    stream, readers, handles = [], {}, []

    def grab_input(module, args):
        if module is blocks[0] and \
                getattr(module, 'downsample', None) is None:
            stream.append(args[0])  # the stem's output, read by block 0

    def grab_output(module, args, output):
        stream.append(output)

    def grab_pooled(module, args, output):
        # ResNetV1d's downsample pools the stream before its conv
        if any(args[0] is t for t in stream):
            stream.append(output)

    for b in blocks:
        handles.append(b.register_forward_pre_hook(grab_input))
        handles.append(b.register_forward_hook(grab_output))
    for name, m in model.named_modules():
        if isinstance(m, nn.AvgPool2d) and '.downsample.' in f'.{name}.':
            handles.append(m.register_forward_hook(grab_pooled))
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            def read(module, args, name=name):
                if any(args[0] is t for t in stream):
                    readers[name] = module
            handles.append(layer.register_forward_pre_hook(read))
    run_with_hooks(handles, run)
    return stream, readers


@MODELS.register_module()
class StreamEqualization:
    """Equalise the channel ranges of ResNet residual streams.

    Applied to the FP and the quantized model alike (both stay equivalent
    to what they were in float), before activation ranges are calibrated:
    afterwards recalibrate the activations; the readers' weight ranges are
    searched again here.

    Args:
        stages (Sequence[int]): Residual stages (indices into the
            backbone's ``res_layers``) whose streams are equalised.
            Defaults to ``(0,)``: the first stage, the highest resolution.
        alpha (float): Migration strength in [0, 1]: 1 makes every
            channel's range equal (all of it into the weights), 0 moves
            only weight magnitude. Defaults to 0.5.
        backbone (str): Name of the ResNet in the model. Defaults to
            ``'backbone'``.
        max_scale (float): Largest ratio between two channels' scales.
            Defaults to 16.
    """

    def __init__(self,
                 stages: Sequence[int] = (0, ),
                 alpha: float = 0.5,
                 backbone: str = 'backbone',
                 max_scale: float = 16.) -> None:
        if not 0. <= alpha <= 1.:
            raise ValueError(f'alpha must be in [0, 1], got {alpha}')
        if max_scale < 1:
            raise ValueError(f'max_scale must be >= 1, got {max_scale}')
        self.stages = tuple(int(s) for s in stages)
        self.alpha = float(alpha)
        self.backbone = backbone
        self.max_scale = float(max_scale)

    def _backbone(self, model: nn.Module) -> nn.Module:
        try:
            return model.get_submodule(self.backbone) if self.backbone \
                else model
        except AttributeError:
            raise ValueError(f'backbone: the model has no module '
                             f'{self.backbone!r}') from None

    @torch.no_grad()
    def __call__(self, fp_model: nn.Module, q_model: nn.Module,
                 forward: Forward,
                 batches: Sequence[torch.Tensor]) -> Dict[int, torch.Tensor]:
        """Equalise both models in place.

        Everything is checked before anything changes; afterwards the FP
        model's outputs on the first batch must be what they were (a reader
        of the stream the tensor identity missed would change them), or
        both models are put back and a ``ValueError`` raised.

        Args:
            fp_model (nn.Module): The FP model (ranges are measured on it).
            q_model (nn.Module): Its quantized copy (same module names).
            forward (Callable): ``forward(model, x)`` (the task adapter's).
            batches (Sequence[Tensor]): The sample pool.

        Returns:
            dict[int, Tensor]: Per stage, the scales ``s`` (the stream's
            channel ``c`` is divided by ``s[c]``).
        """
        plans = []
        for stage in self.stages:
            act, readers = self._measure(fp_model, forward, batches, stage)
            for model in (fp_model, q_model):
                self._check(model, stage, readers, act.numel())
            scales = self._scales(act, [q_model.get_submodule(n)
                                        for n in readers])
            plans.append((stage, readers, scales))
        x = batches[0]
        before = flatten_tensors(forward(fp_model, x))
        saved = [{k: v.clone() for k, v in m.state_dict().items()}
                 for m in (fp_model, q_model)]
        for stage, readers, scales in plans:
            for model in (fp_model, q_model):
                self._apply(model, stage, readers, scales)
        after = flatten_tensors(forward(fp_model, x))
        if not all(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (
                b.abs().max().item() + 1e-12)) for a, b in zip(after, before)):
            for model, state in zip((fp_model, q_model), saved):
                model.load_state_dict(state)
            raise ValueError(
                'equalisation changed the FP model\'s outputs: something '
                'reads the residual stream in a way it cannot follow (a '
                'copy, a pooled or reshaped read); the models are as they '
                'were')
        return {stage: scales for stage, _, scales in plans}

    def _measure(self, fp_model, forward, batches, stage):
        """Per-channel peak of the stream on the pool, and its readers."""
        backbone = self._backbone(fp_model)
        stream_writers(backbone, stage)  # fails early on another model
        peaks, readers = [], {}
        for x in batches:
            stream, readers = _stream_tensors(fp_model, backbone, stage,
                                              lambda: forward(fp_model, x))
            # per channel, the largest magnitude anywhere in the stream
            peaks.append(torch.stack([
                t.detach().float().abs().transpose(0, 1).flatten(1).amax(1)
                for t in stream]).amax(0))
        act = torch.stack(peaks).mean(0)
        # data-parallel ranks draw different pools: agree on one scale
        all_reduce(act, op='mean')
        if not readers:
            raise ValueError(f'stage {stage}: no conv or linear layer reads '
                             'its stream')
        return act, sorted(readers)

    def _check(self, model, stage, readers, channels) -> None:
        """Raise if anything of ``model`` cannot be scaled."""
        for norm in stream_writers(self._backbone(model), stage):
            if norm.weight is None or norm.bias is None:
                raise ValueError('equalisation needs affine norms (a '
                                 'BatchNorm with weight and bias)')
        for name in readers:
            layer = model.get_submodule(name)
            if getattr(layer, 'groups', 1) != 1 or \
                    layer.weight.shape[1] != channels:
                raise ValueError(f'{name} reads the stream of stage '
                                 f'{stage} but not as a dense conv / linear '
                                 f'over its {channels} channels')
            quantizer = getattr(layer, 'weight_quantizer', None)
            if quantizer is not None and quantizer.fixed_scale.numel():
                raise ValueError(f'{name}: its weight is already rounded '
                                 'onto a fixed grid (reconstructed); '
                                 'equalise before reconstruction')

    def _scales(self, act, readers) -> torch.Tensor:
        """``s = act ** alpha / weight ** (1 - alpha)``, geometric mean 1
        over the live channels, spread at most ``max_scale``."""
        weight = torch.zeros_like(act)
        for layer in readers:
            w = layer.weight.detach().float().abs()
            w = w / w.flatten(1).amax(1).clamp(min=1e-12).view(
                -1, *[1] * (w.dim() - 1))
            weight = torch.maximum(
                weight, w.transpose(0, 1).flatten(1).amax(1).to(act))
        # a dead channel (never active, or read by nothing) keeps scale 1
        # and does not pull the others' mean
        live = (act > 1e-6 * act.max()) & (weight > 1e-6)
        scales = torch.ones_like(act)
        if live.any():
            s = act[live].pow(self.alpha) / weight[live].pow(1 - self.alpha)
            s = s / s.log().mean().exp()
            bound = self.max_scale**0.5
            scales[live] = s.clamp(1 / bound, bound)
        return scales

    def _apply(self, model, stage, readers, scales) -> None:
        for norm in stream_writers(self._backbone(model), stage):
            norm.weight.div_(scales.to(norm.weight))
            norm.bias.div_(scales.to(norm.bias))
        for name in readers:
            layer = model.get_submodule(name)
            shape = [1, -1] + [1] * (layer.weight.dim() - 2)
            layer.weight.mul_(scales.to(layer.weight).view(shape))
            quantizer = getattr(layer, 'weight_quantizer', None)
            if quantizer is not None:
                # the range search follows the new weight (a learned step
                # starts again from it)
                quantizer.init_from(layer.weight)
