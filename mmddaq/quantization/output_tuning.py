"""Post-training refinement of the activation steps against the model's
output error, after block reconstruction."""
import inspect
import math
import time
from typing import Callable, List, Optional, Sequence

import torch
from mmengine.logging import print_log
from torch import nn

from mmddaq.registry import MODELS
from mmddaq.utils.dist import all_reduce_mean_, world_size
from .model_quantizer import (activation_quantizers, observation_disabled,
                              quantized_layers)
from .quantizers import quantize_weights_once

Forward = Callable[..., object]


class PairedForward:
    """Runs the FP model (no autograd) and the quantized model on a batch;
    a ``forward`` that takes ``reference`` (a two-stage detector adapter's)
    gets the FP outputs for the quantized pass."""

    def __init__(self, fp_model: nn.Module, q_model: nn.Module,
                 forward: Forward) -> None:
        self.fp_model, self.q_model, self.forward = fp_model, q_model, forward
        self.takes_reference = \
            'reference' in inspect.signature(forward).parameters

    def __call__(self, x: torch.Tensor):
        with torch.no_grad():
            reference = self.forward(self.fp_model, x)
        with quantize_weights_once(self.q_model):
            if self.takes_reference:
                out = self.forward(self.q_model, x, reference=reference)
            else:
                out = self.forward(self.q_model, x)
        return reference, out


@torch.no_grad()
def mean_output_loss(run: PairedForward, output_loss: Callable,
                     batches) -> float:
    """Mean of ``output_loss(fp_output, q_output)`` over ``batches``."""
    total = 0.
    for x in batches:
        total += float(output_loss(*run(x)))
    return total / len(batches)


@MODELS.register_module()
class OutputTuning:
    """Learn every activation step of the quantized model (LSQ) against the
    task's output error on the pool, the whole model at once.

    Block reconstruction fits each unit's output on its own, so a step that
    is best for a block's squared error may not be for what the model
    predicts. This stage runs after it (weights and their rounding stay as
    they are) and lowers the task adapter's ``distill_loss`` between the FP
    and the quantized outputs (for detectors the confidence-weighted score
    and box distance) by learning the activation steps only; optionally the
    layers' biases too. The steps are baked back into the ranges, so the
    model keeps its structure and exports as before. The pool's last
    batches (``holdout``) judge the result: if their output loss does not
    go down, every step and bias is put back (also when the optimisation
    fails). Data-parallel ranks average their gradients and judge on the
    mean of their held-out losses, so they end with the same model.

    Args:
        iters (int): Optimisation steps, one pool batch each. Defaults to
            200.
        act_lr (float): Adam learning rate of the steps (absolute, as
            ``BlockReconstruction``'s ``act_lr``: Adam moves a step by about
            this much per iteration, suited to 4-bit steps), cosine-annealed
            to 0. Defaults to 1e-3.
        bias_lr (float, optional): Also learn the quantized layers' biases
            with this learning rate. Defaults to None (steps only).
        holdout (float): Share of the pool's batches kept out of the fit
            and used to judge it (at least one batch when the pool has two
            or more). Defaults to 0.25.
        log_interval (int): Log the loss every n steps (0: only the
            summary). Defaults to 50.
    """

    def __init__(self,
                 iters: int = 200,
                 act_lr: float = 1e-3,
                 bias_lr: Optional[float] = None,
                 holdout: float = 0.25,
                 log_interval: int = 50) -> None:
        if iters < 1:
            raise ValueError(f'iters must be >= 1, got {iters}')
        if act_lr <= 0:
            raise ValueError(f'act_lr must be > 0, got {act_lr}')
        if bias_lr is not None and bias_lr <= 0:
            raise ValueError(f'bias_lr must be > 0 (or None), got {bias_lr}')
        if not 0 <= holdout < 1:
            raise ValueError(f'holdout must be in [0, 1), got {holdout}')
        self.iters = int(iters)
        self.act_lr = float(act_lr)
        self.bias_lr = None if bias_lr is None else float(bias_lr)
        self.holdout = float(holdout)
        self.log_interval = int(log_interval)

    def split(self, batches: Sequence[torch.Tensor]):
        """(batches to fit, batches to judge): the last ``holdout`` share
        judges; with one batch, or ``holdout=0``, both are all batches."""
        held = int(round(self.holdout * len(batches)))
        if self.holdout > 0 and len(batches) > 1:
            held = min(max(held, 1), len(batches) - 1)
        else:
            held = 0
        if held == 0:
            return list(batches), list(batches)
        return list(batches[:-held]), list(batches[-held:])

    def __call__(self, fp_model: nn.Module, q_model: nn.Module,
                 forward: Forward, batches: Sequence[torch.Tensor],
                 output_loss: Optional[Callable] = None) -> dict:
        """Tune ``q_model``'s activation steps in place.

        Args:
            fp_model (nn.Module): The frozen FP model.
            q_model (nn.Module): Its fake-quantized copy, activation ranges
                frozen.
            forward (Callable): ``forward(model, x)`` runs a model on a
                batch (the task adapter's forward).
            batches (Sequence[Tensor]): The sample pool, in batches.
            output_loss (Callable): ``output_loss(fp_output, q_output)``
                (a task adapter's ``distill_loss``).

        Returns:
            dict: ``loss_before`` and ``loss_after`` (mean output loss on
            the held-out batches), ``kept``, ``steps`` (activation steps
            learned), ``biases`` (bias tensors learned) and ``seconds``.
        """
        if output_loss is None:
            raise ValueError('OutputTuning needs an output_loss (a task '
                             'adapter\'s distill_loss)')
        if not len(batches):
            raise ValueError('OutputTuning needs at least one batch')
        tic = time.perf_counter()
        acts = [q for q in activation_quantizers(q_model)
                if q.enabled and q.is_frozen()]
        if not acts:
            raise RuntimeError('OutputTuning: the quantized model has no '
                               'frozen activation ranges to tune; calibrate '
                               'and freeze them first')
        fit, judge = self.split(batches)
        run = PairedForward(fp_model, q_model, forward)
        with observation_disabled(q_model):
            before = mean_output_loss(run, output_loss, judge)
            learned_here = [q for q in acts if not q.learnable]
            ranges = [(q.observer.min_val.clone(), q.observer.max_val.clone())
                      for q in learned_here]
            # steps a config already learns (LSQ) stay learnable
            configured = [(q, q.scale.detach().clone()) for q in acts
                          if q.learnable]
            steps = [q.start_step_learning() for q in acts]
            biases = [m.bias for _, m in quantized_layers(q_model)
                      if m.bias is not None] if self.bias_lr else []
            bias_state = [(b.detach().clone(), b.requires_grad)
                          for b in biases]

            @torch.no_grad()
            def put_back():
                for q, (lo, hi) in zip(learned_here, ranges):
                    q.observer.min_val.copy_(lo)
                    q.observer.max_val.copy_(hi)
                    q._host.pop('qparams', None)
                for q, value in configured:
                    q.scale.copy_(value)
                for b, (value, _) in zip(biases, bias_state):
                    b.copy_(value)

            failed = True
            try:
                self._optimise(run, output_loss, fit, steps, biases)
                failed = False
            finally:
                for b, (_, grad) in zip(biases, bias_state):
                    b.grad = None
                    b.requires_grad_(grad)
                for p in steps:
                    p.grad = None
                for q in learned_here:
                    q.bake_learned_step()
                if failed:
                    put_back()
            after = mean_output_loss(run, output_loss, judge)
            # data-parallel ranks judge on the mean of their pools, so they
            # keep or put back alike
            losses = torch.tensor([before, after], dtype=torch.float64)
            all_reduce_mean_([losses])
            before, after = losses.tolist()
            kept = after < before
            if not kept:
                put_back()
                after = before
        return dict(loss_before=before, loss_after=after, kept=kept,
                    steps=len(steps), biases=len(biases),
                    seconds=time.perf_counter() - tic)

    def _optimise(self, run: PairedForward, output_loss: Callable, fit,
                  steps: List[nn.Parameter],
                  biases: List[nn.Parameter]) -> None:
        groups = [dict(params=steps, lr=self.act_lr)]
        if biases:
            for b in biases:
                b.requires_grad_(True)
            groups.append(dict(params=biases, lr=self.bias_lr))
        params = steps + biases
        optimizer = torch.optim.Adam(groups)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda it: 0.5 * (1 + math.cos(math.pi * it / self.iters)))
        order = torch.randperm(len(fit)).tolist()
        running = None
        for it in range(self.iters):
            if it and it % len(fit) == 0:
                order = torch.randperm(len(fit)).tolist()
            loss = output_loss(*run(fit[order[it % len(fit)]]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward(inputs=params)
            if world_size() > 1:
                # data-parallel ranks learn the same steps from all their
                # pools (a step unused on one rank, e.g. without RoIs, adds 0)
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                all_reduce_mean_([p.grad for p in params])
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            running = value if running is None else \
                0.9 * running + 0.1 * value
            if self.log_interval and (it + 1) % self.log_interval == 0:
                print_log(f'Output tuning {it + 1}/{self.iters}: output '
                          f'loss {running:.4g}', logger='current')


__all__ = ['OutputTuning']
