"""Data-parallel DDAQ: two CPU processes over gloo.

The end-to-end test runs ``tools/dist_train.sh`` (torchrun, ``--launcher
pytorch``) on a tiny digits DDAQ config; a probe hook, imported through
``custom_imports``, saves what every rank saw and ended with.
"""
import importlib.util
import os
import os.path as osp
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from conftest import DDAQ_CONFIG, ROOT

from mmddaq.models.wrappers import DDAQDataParallel
from mmddaq.quantization.observers import (EMAMinMaxObserver,
                                           all_reduce_pending)
from mmddaq.utils.dist import init_dist_without_gpu

PROBE = '''
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


def trained_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.startswith(('generator.', 'quantized.'))}


@HOOKS.register_module()
class DistProbeHook(Hook):
    """Record initial/final state, noise and step plans of this rank."""

    priority = 'LOWEST'

    def before_train(self, runner):
        model = runner.model.module
        self.initial = trained_state(model)
        self.noise, self.plans = [], []
        draw = model.generator.sample_noise

        def recording(*args, **kwargs):
            z, labels = draw(*args, **kwargs)
            self.noise.append(z.detach().clone())
            return z, labels

        model.generator.sample_noise = recording

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.plans.append((data_batch['update_generator'],
                           data_batch['update_quantized']))

    def after_train(self, runner):
        model = runner.model.module
        torch.save(
            dict(wrapper=type(runner.model).__name__,
                 seed=torch.initial_seed(),
                 initial=self.initial, final=trained_state(model),
                 noise=self.noise, plans=self.plans,
                 importance=dict(model.layer_importance)),
            f'{runner.work_dir}/probe_rank{get_rank()}.pth')
'''

# 4 iterations: 0 generator only (warm-up), 1 and 3 quantized only
# (generator_interval=2), 2 both; activation ranges calibrated over 0-1.
DIST_BODY = """
custom_imports = dict(imports=['mmddaq', 'ddaq_probe'],
                      allow_failed_imports=False)
model = dict(
    fp_checkpoint='{fp}',
    architecture=dict(backbone=dict(stem_channels=8, base_channels=8),
                      head=dict(in_channels=64)),
    generator=dict(base_channels=16, latent_dim=16))
train_cfg = dict(max_iters=4, batch_size=8, warmup_iters=1,
                 generator_interval=2, val_interval=100)
val_cfg = None
val_dataloader = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(interval=100))
# rely on DataFreeRunner's defaults (DDAQDataParallel, diff_rank_seed), which
# also cover configs that do not inherit the mmddaq bases
model_wrapper_cfg = None
randomness = dict(_delete_=True, seed=0)
custom_hooks = [
    dict(type='mmddaq.LayerImportanceHook',
         method=dict(type='HessianImportance', batch_size=4, num_batches=1,
                     num_probes=2)),
    dict(type='mmddaq.ActivationCalibrationHook', calib_iters=2),
    dict(type='DistProbeHook'),
]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def dist_run(tiny_fp_checkpoint, tmp_path_factory):
    """Train the tiny DDAQ config on 2 CPU processes; load both probes."""
    tmp = tmp_path_factory.mktemp('dist')
    (tmp / 'ddaq_probe.py').write_text(PROBE)
    cfg = tmp / 'ddaq_dist.py'
    cfg.write_text(f"_base_ = '{DDAQ_CONFIG}'\n" +
                   DIST_BODY.format(fp=tiny_fp_checkpoint))
    work = tmp / 'work'
    env = dict(
        os.environ,
        PYTHONWARNINGS='ignore',
        OMP_NUM_THREADS='1',
        MKL_NUM_THREADS='1',
        PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join([str(tmp), ROOT]),
        PATH=osp.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    env.pop('CUDA_VISIBLE_DEVICES', None)
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(cfg), '2', '--work-dir',
         str(work)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f'distributed training failed:\n'
                             f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    probes = [
        torch.load(work / f'probe_rank{r}.pth', weights_only=True)
        for r in range(2)
    ]
    return probes, proc.stdout + proc.stderr, work


def test_ranks_stay_identical_and_train(dist_run):
    (p0, p1), log, work = dist_run
    assert p0['wrapper'] == p1['wrapper'] == 'DDAQDataParallel'
    # the plan exercised both single-model updates and the joint one
    assert p0['plans'] == p1['plans']
    assert {(True, False), (False, True), (True, True)} <= set(p0['plans'])

    final0, final1 = p0['final'], p1['final']
    assert final0.keys() == final1.keys()
    differ = [k for k in final0 if not torch.equal(final0[k], final1[k])]
    assert not differ, f'ranks ended with different tensors: {differ[:5]}'

    # every kind of state took part and moved from its initial value
    def moved(keys):
        keys = list(keys)
        assert keys
        return [k for k in keys
                if not torch.equal(p0['initial'][k], final0[k])]

    g_params = [k for k in final0
                if k.startswith('generator.') and k.endswith('weight')]
    q_weights = [k for k in final0
                 if k.startswith('quantized.') and k.endswith('conv1.weight')]
    g_stats = [k for k in final0
               if k.startswith('generator.') and k.endswith('running_mean')]
    ranges = [k for k in final0 if k.endswith('observer.max_val')]
    assert moved(g_params) == g_params
    assert moved(q_weights) == q_weights
    assert moved(g_stats) == g_stats
    assert moved(ranges) == ranges
    assert all(bool(final0[k] > 0) for k in ranges)
    assert all(bool(final0[k.replace('observer.max_val', 'frozen')])
               for k in ranges)
    assert 'Activation ranges frozen' in log


def test_each_rank_draws_its_own_noise(dist_run):
    (p0, p1), _, _ = dist_run
    # seeded seed + rank (randomness.diff_rank_seed of the mmddaq configs)
    assert p1['seed'] == p0['seed'] + 1
    assert len(p0['noise']) == len(p1['noise']) == 4
    for z0, z1 in zip(p0['noise'], p1['noise']):
        assert z0.shape == z1.shape
        assert not torch.allclose(z0, z1)


def test_importance_is_identical_across_ranks(dist_run):
    (p0, p1), _, work = dist_run
    assert p0['importance'] and p0['importance'] == p1['importance']
    # measured, not uniform: the ranks would disagree without broadcast
    assert len(set(p0['importance'].values())) > 1
    assert (work / 'layer_importance.json').is_file()


# ----------------------------------------------------------------------
# the collectives on their own, in two spawned gloo processes


def _collectives_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        # ranges: the global batch's min and max; unseen on one rank only
        obs = [EMAMinMaxObserver() for _ in range(3)]
        obs[0](torch.tensor([-1., 2.]) * (rank + 1))
        obs[1](torch.tensor([5.]) if rank == 1 else torch.empty(0))
        all_reduce_pending(obs)
        for o in obs:
            o.step()
        ranges = [(float(o.min_val), float(o.max_val), int(o.num_batches))
                  for o in obs]

        # gradients: averaged over ranks, only where they exist
        torch.manual_seed(rank)
        module = torch.nn.Module()
        module.a = torch.nn.Linear(3, 2)
        module.b = torch.nn.Linear(2, 1)
        wrapper = DDAQDataParallel(module, bucket_cap_mb=1e-5)
        same_init = module.a.weight.detach().clone()
        module.a.weight.grad = torch.full_like(module.a.weight, rank + 1.)
        module.a.bias.grad = torch.full_like(module.a.bias, 2. * rank)
        wrapper.average_gradients(list(module.parameters()))
        grads = (module.a.weight.grad.clone(), module.a.bias.grad.clone(),
                 module.b.weight.grad)

        # a rank with other gradients than its peer fails clearly
        if rank == 1:
            module.b.weight.grad = torch.ones_like(module.b.weight)
        try:
            wrapper.average_gradients(list(module.parameters()))
            mismatch = ''
        except RuntimeError as e:
            mismatch = str(e)
        torch.save(dict(ranges=ranges, grads=grads, init=same_init,
                        mismatch=mismatch), f'{out_dir}/rank{rank}.pth')
    finally:
        torch_dist.destroy_process_group()


def test_collectives_average_gradients_and_merge_ranges(tmp_path):
    mp.spawn(_collectives_worker, args=(free_port(), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'rank{r}.pth', weights_only=True)
              for r in range(2))
    for r in (r0, r1):
        assert r['ranges'][0] == (-2., 4., 1)
        assert r['ranges'][1] == (5., 5., 1)
        assert r['ranges'][2] == (0., 0., 0)  # nobody saw anything
        w_grad, b_grad, untouched = r['grads']
        assert torch.equal(w_grad, torch.full_like(w_grad, 1.5))
        assert torch.equal(b_grad, torch.full_like(b_grad, 1.))
        assert untouched is None
        assert 'ranks disagree on which parameters have gradients' in \
            r['mismatch']
    # construction gave rank 1 the initial weights of rank 0
    assert torch.equal(r0['init'], r1['init'])


# ----------------------------------------------------------------------
# single process: everything is a no-op, errors are clear


def test_single_process_is_unchanged():
    obs = EMAMinMaxObserver()
    obs(torch.tensor([1., 3.]))
    all_reduce_pending([obs])
    obs.step()
    assert (float(obs.min_val), float(obs.max_val)) == (1., 3.)
    module = torch.nn.Linear(2, 2)
    module.weight.grad = torch.ones_like(module.weight)
    DDAQDataParallel(module).average_gradients(list(module.parameters()))
    assert torch.equal(module.weight.grad, torch.ones_like(module.weight))
    with pytest.raises(ValueError, match='bucket_cap_mb'):
        DDAQDataParallel(module, bucket_cap_mb=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason='CPU-only path')
def test_pytorch_launcher_without_torchrun_env_is_a_clear_error(monkeypatch):
    for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match='torchrun'):
        init_dist_without_gpu('pytorch')
    assert init_dist_without_gpu('none') is False
    assert not torch_dist.is_initialized()


# ----------------------------------------------------------------------
# slurm: the script composes the srun command (srun faked here)


def test_slurm_script_launches_train_with_slurm_launcher(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake = bin_dir / 'srun'
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$SRUN_LOG"\n'
                    'echo "$PYTHONPATH" > "$SRUN_LOG.env"\n')
    fake.chmod(0o755)
    log = tmp_path / 'srun.txt'
    env = dict(os.environ, PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
               SRUN_LOG=str(log), GPUS='4', SRUN_ARGS='--quotatype=auto')
    proc = subprocess.run(
        ['bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py', 'wd',
         '--cfg-options', 'train_cfg.max_iters=2'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = log.read_text().split('\n')
    assert args[:2] == ['-p', 'part']
    for expected in ('--job-name=job', '--ntasks=4', '--ntasks-per-node=4',
                     '--gres=gpu:4', '--quotatype=auto',
                     osp.join(ROOT, 'tools', 'train.py'), 'cfg.py',
                     '--work-dir=wd', 'train_cfg.max_iters=2'):
        assert expected in args
    assert args[args.index('--launcher') + 1] == 'slurm'
    assert ROOT in (tmp_path / 'srun.txt.env').read_text()

    proc = subprocess.run(['bash', 'tools/slurm_train.sh', 'part'], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and 'usage' in proc.stderr


def test_train_tool_accepts_both_launchers(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it if missing
    spec = importlib.util.spec_from_file_location(
        'mmddaq_train_tool', osp.join(ROOT, 'tools', 'train.py'))
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    for launcher in ('pytorch', 'slurm'):
        args = train_tool.parse_args(['cfg.py', '--launcher', launcher])
        assert args.launcher == launcher


def _output_tuning_worker(rank, port, out_dir):
    import copy
    from test_output_tuning import coarse_model, mse
    from mmddaq.quantization import OutputTuning, activation_quantizers
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        fp, q, _, _ = coarse_model()  # the same model on both ranks
        gen = torch.Generator().manual_seed(10 + rank)  # pools differ
        pool = [torch.randn(8, 3, 12, 12, generator=gen) for _ in range(4)]
        torch.manual_seed(rank)
        result = OutputTuning(iters=8, act_lr=1e-2, log_interval=0)(
            fp, q, lambda m, b: m(b), pool, output_loss=mse)
        alone = copy.deepcopy(q)
        torch.save(dict(result=result, ranges=[
            (a.observer.min_val.clone(), a.observer.max_val.clone())
            for a in activation_quantizers(alone)
        ]), f'{out_dir}/tuned{rank}.pth')
    finally:
        torch_dist.destroy_process_group()


def test_output_tuning_ends_with_the_same_model_on_every_rank(tmp_path):
    mp.spawn(_output_tuning_worker, args=(free_port(), str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f'tuned{r}.pth', weights_only=False)
              for r in range(2))
    assert r0['result']['kept'] == r1['result']['kept']
    assert r0['result']['loss_after'] == r1['result']['loss_after']
    for (lo0, hi0), (lo1, hi1) in zip(r0['ranges'], r1['ranges']):
        assert torch.equal(lo0, lo1) and torch.equal(hi0, hi1)
    # the ranks did tune (the ranges moved from their coarse start)
    assert r0['result']['kept']
