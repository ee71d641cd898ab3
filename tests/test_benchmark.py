"""Baselines derived from a DDAQ config, and the benchmark's --config form."""
import importlib.util
import json
import os.path as osp

import pytest

from conftest import DDAQ_CONFIG, ROOT, tiny_ddaq_options
from mmddaq.apis import load_config
from mmddaq.apis.baselines import DERIVED_METHODS, derive_method

DIGITS_FILES = {
    'ptq': 'configs/baselines/ptq_resnet18-w16_digits_w4a4.py',
    'zeroq': 'configs/baselines/zeroq_resnet18-w16_digits_w4a4.py',
    'gdfq': 'configs/baselines/gdfq_resnet18-w16_digits_w4a4.py',
    'ddaq-no-d1': 'configs/ablations/ddaq-no-d1_resnet18-w16_digits_w4a4.py',
    'ddaq-no-d2': 'configs/ablations/ddaq-no-d2_resnet18-w16_digits_w4a4.py',
    'ddaq-uniform':
    'configs/ablations/ddaq-uniform_resnet18-w16_digits_w4a4.py',
    'ptq-mse': 'configs/baselines/ptq-mse_resnet18-w16_digits_w4a4.py',
    'genie': 'configs/baselines/genie_resnet18-w16_digits_w4a4.py',
    'qdrop-real': 'configs/baselines/qdrop-real_resnet18-w16_digits_w4a4.py',
    'ddaq-kd': 'configs/baselines/ddaq-kd_resnet18-w16_digits_w4a4.py',
}


def _hook_key(h):
    kind = h['type'].split('.')[-1]
    if kind == 'PostTrainingHook':
        rec = h.get('reconstruction')
        return (kind, h['samples']['type'].split('.')[-1],
                str(sorted((h.get('observers') or {}).items())),
                str(sorted(rec.items())) if rec else '')
    method = h.get('method')
    return (kind, method.get('type', '') if isinstance(method, dict) else '')


def _benchmark_module():
    spec = importlib.util.spec_from_file_location(
        'mmddaq_benchmark_tool', osp.join(ROOT, 'tools', 'benchmark.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(cfg):
    """What distinguishes the methods: losses, samples, schedule, hooks."""
    hooks = sorted(
        _hook_key(h) for h in cfg.custom_hooks
        if h['type'].split('.')[-1] != 'GeneratedSamplesHook')
    return dict(
        loss_weights={k: float(v) for k, v in cfg.model.loss_weights.items()},
        sample_source=cfg.model.get('sample_source', 'generator'),
        generator=cfg.model.get('generator') is not None,
        max_iters=cfg.train_cfg.max_iters,
        warmup_iters=cfg.train_cfg.warmup_iters,
        generator_interval=cfg.train_cfg.get('generator_interval', 1),
        hooks=hooks)


@pytest.mark.parametrize('method', sorted(DIGITS_FILES))
def test_derived_method_matches_the_digits_config_file(method):
    derived = derive_method(load_config(DDAQ_CONFIG), method)
    written = load_config(DIGITS_FILES[method])
    assert _recipe(derived) == _recipe(written)


def test_derive_keeps_ddaq_and_leaves_the_input_alone():
    cfg = load_config(DDAQ_CONFIG)
    before = cfg.pretty_text
    assert derive_method(cfg, 'ddaq').pretty_text == before
    derive_method(cfg, 'ptq')
    assert cfg.pretty_text == before


def test_derived_pool_replaces_the_configs_own_sample_source():
    # a config's own pool may be MixedSamples(sources=...); a derived
    # method's source must not inherit those arguments
    cfg = load_config(osp.join(ROOT, 'configs',
                               'ddaq_retinanet_r18-w16_frozenbn_w4a4.py'))
    own = [h for h in cfg.custom_hooks
           if h['type'].endswith('PostTrainingHook')][0]
    own['samples'] = dict(type='mmddaq.MixedSamples',
                          sources=[dict(type='mmddaq.AlgorithmSamples'),
                                   dict(type='mmddaq.GaussianSamples')])
    for method, source in (('ptq-mse', 'mmddaq.GaussianSamples'),
                           ('genie', 'mmddaq.AlgorithmSamples')):
        post = [h for h in derive_method(cfg, method).custom_hooks
                if h['type'].endswith('PostTrainingHook')]
        assert [dict(h['samples']) for h in post] == [dict(type=source)]
    from mmddaq.registry import HOOKS
    HOOKS.build(post[0])  # builds (it did not with leaked arguments)


def test_derived_methods_share_the_configs_range_source():
    # the frozen-BN config calibrates ranges on Gaussian samples and
    # reconstructs on the generator's: data-free methods that reconstruct
    # keep the range source and the focus; ptq-mse's own pool is the
    # Gaussian set
    cfg = load_config(osp.join(ROOT, 'configs',
                               'ddaq_retinanet_r18-w16_frozenbn_w4a4.py'))

    def post(method):
        return [h for h in derive_method(cfg, method).custom_hooks
                if h['type'].endswith('PostTrainingHook')][0]

    assert post('ddaq')['samples'] == dict(type='mmddaq.AlgorithmSamples')
    for method in ('ddaq', 'genie'):
        assert post(method)['calibration_samples'] == dict(
            type='mmddaq.GaussianSamples')
        assert post(method)['reconstruction']['focus'] > 0
    assert 'calibration_samples' not in post('ptq-mse')
    assert post('ptq-mse')['reconstruction'] is None
    # the refinement after reconstruction goes with it: the methods that
    # reconstruct keep it, calibration alone has none
    for method in ('ddaq', 'genie', 'qdrop-real'):
        assert post(method)['output_tuning']['type'] == 'mmddaq.OutputTuning'
    assert post('ptq-mse')['output_tuning'] is None
    # the real-data upper bound fits its ranges to its real pool, not to
    # the data-free method's Gaussian noise
    real = post('qdrop-real')
    assert real['samples']['type'] == 'mmddaq.RealSamples'
    assert real.get('calibration_samples') is None and real['calibrate']
    assert real['observers']['act']['type'] == 'mmddaq.MSEObserver'
    assert real['reconstruction']['focus'] > 0


@pytest.mark.parametrize('config', [
    'ddaq_retinanet_r18-w16_shapes_w4a4.py',
    'ddaq_faster-rcnn_r18-w16_shapes_w4a4.py',
    'mixed/ddaq-mixed-w4a4_faster-rcnn_r18-w16_shapes.py',
    'ddaq_retinanet_r18-w16_frozenbn_w4a4.py',
    'ddaq_faster-rcnn_r18-w16_frozenbn_w4a4.py',
])
def test_detection_configs_calibrate_activations_on_gaussian_samples(
        config):
    # on the detectors' tune splits where both were compared (frozen-BN
    # RetinaNet, shapes Faster R-CNN) activation ranges fitted to the
    # generator's pool scored below Gaussian ones; reconstruction still
    # runs on the generator's samples, and Genie-style inherits both
    cfg = load_config(osp.join(ROOT, 'configs', config))
    for method in ('ddaq', 'genie'):
        post = [h for h in derive_method(cfg, method).custom_hooks
                if h['type'].endswith('PostTrainingHook')]
        assert len(post) == 1, method
        assert post[0]['calibration_samples'] == dict(
            type='mmddaq.GaussianSamples'), method
        assert post[0]['samples'] == dict(type='mmddaq.AlgorithmSamples')
        assert post[0]['reconstruction'] is not None


def test_derive_errors_are_clear():
    with pytest.raises(ValueError, match='unknown method "qat2"'):
        derive_method(load_config(DDAQ_CONFIG), 'qat2')
    fp = load_config('configs/fp_resnet18-w16_digits.py')
    with pytest.raises(ValueError, match='derived from a DDAQ config'):
        derive_method(fp, 'ptq')


def test_detection_configs_derive_every_method():
    cfg = load_config('configs/ddaq_retinanet_r18-w16_shapes_w4a4.py')
    for method in DERIVED_METHODS:
        derived = derive_method(cfg, method)
        assert derived.model.type == 'mmddaq.DDAQ'
    gdfq = derive_method(cfg, 'gdfq')
    # unconditional generator: BN statistics only, no CE
    assert gdfq.model.loss_weights.ce == 0
    assert gdfq.model.loss_weights.dis == 0


def test_kd_loss_weights_apply_to_the_kd_recipe_only():
    cfg = load_config(DDAQ_CONFIG)
    cfg.kd_loss_weights = dict(bns=0.7)
    assert derive_method(cfg, 'ddaq-kd').model.loss_weights.bns == 0.7
    for method in ('ddaq', 'ddaq-no-d2', 'ddaq-uniform'):
        derived = derive_method(cfg, method)
        assert derived.model.loss_weights.bns == cfg.model.loss_weights.bns
    assert derive_method(cfg, 'ddaq-no-d1').model.loss_weights.bns == 0


def test_benchmark_config_form(tiny_fp_checkpoint, tmp_path):
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    cfg.custom_hooks = cfg.custom_hooks + [
        dict(type='mmddaq.PostTrainingHook', num_samples=8, batch_size=4,
             reconstruction=dict(type='mmddaq.BlockReconstruction', iters=2,
                                 batch_size=4))
    ]
    config = str(tmp_path / 'my_ddaq.py')
    cfg.dump(config)
    out = str(tmp_path / 'rows.json')
    argv = [
        '--config', config, '--checkpoint', tiny_fp_checkpoint, '--out', out,
        '--methods', 'fp', 'ptq', 'ddaq', '--bits', '4', '--seeds', '0',
        '--work-root', str(tmp_path / 'runs')
    ]
    bench = _benchmark_module()
    bench.main(argv)
    with open(out) as f:
        rows = json.load(f)
    assert sorted(r['method'] for r in rows) == ['ddaq', 'fp', 'ptq']
    for r in rows:
        assert r['suite'] == 'my_ddaq' and r['metric'] == 'top1'
        assert 0 <= r['value'] <= 100
    assert {r['w_bits'] for r in rows if r['method'] != 'fp'} == {4}
    # each trained run's cost: post-training (only where the method has
    # one) is part of the run's seconds; the process's peak memory
    by_method = {r['method']: r for r in rows}
    ddaq, ptq = by_method['ddaq'], by_method['ptq']
    assert 0 < ddaq['post_training_seconds'] <= ddaq['seconds']
    assert 'post_training_seconds' not in ptq
    assert ddaq['peak_memory_mb'] > 0 and ptq['peak_memory_mb'] > 0
    # finished runs are skipped when the benchmark is run again
    bench.main(argv)
    with open(out) as f:
        assert len(json.load(f)) == len(rows)
    table = bench.markdown_table(rows)
    assert '### my_ddaq: top1' in table and '| ptq |' in table


def test_benchmark_config_form_errors(tmp_path):
    bench = _benchmark_module()
    with pytest.raises(SystemExit, match='does not exist'):
        bench.main(['--config', DDAQ_CONFIG, '--checkpoint',
                    str(tmp_path / 'missing.pth'), '--out',
                    str(tmp_path / 'rows.json')])
    assert not osp.exists(tmp_path / 'rows.json')


def test_cost_ratios_on_a_tiny_model(tiny_fp_checkpoint):
    from mmddaq.apis.cost import peak_memory_ratio, speed_ratios
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    ratios = speed_ratios(cfg, repeats=2)
    for key in ('iter_over_fp_step', 'recipe_iter_over_fp_step',
                'fakequant_over_fp_forward'):
        assert 0 < ratios[key] < float('inf')
    # a DDAQ iteration runs two models forward and backward: never cheaper
    assert ratios['ddaq_iter_s'] > ratios['fp_forward_s']
    mem = peak_memory_ratio(cfg, steps=1)
    assert mem['ddaq_peak_mb'] > 0 and mem['fp_peak_mb'] > 0
    assert mem['peak_mem_over_fp_step'] == pytest.approx(
        mem['ddaq_peak_mb'] / mem['fp_peak_mb'])


def test_report_of_several_files_takes_each_method_from_the_newest(
        tmp_path):
    bench = _benchmark_module()

    def row(method, value, seed=0):
        return dict(suite='digits', model='m', method=method, w_bits=4,
                    a_bits=4, seed=seed, metric='top1', value=value,
                    seconds=1.)

    new, old = str(tmp_path / 'new.json'), str(tmp_path / 'old.json')
    bench._save_rows(new, [row('ddaq', 90.)])
    bench._save_rows(old, [row('ddaq', 50.), row('ddaq', 52., seed=1),
                           row('ptq', 40.), dict(row('ddaq', 30.), w_bits=3,
                                                 a_bits=3)])
    rows = bench.report_rows([new, old])
    assert sorted((r['method'], r['w_bits'], r['value']) for r in rows) == [
        ('ddaq', 3, 30.), ('ddaq', 4, 90.), ('ptq', 4, 40.)]
    md = str(tmp_path / 'table.md')
    bench.main(['--report', new, old, '--markdown', md])
    assert '90.00' in open(md).read() and '50.00' not in open(md).read()
    with pytest.raises(SystemExit, match='missing.json'):
        bench.main(['--report', new, str(tmp_path / 'missing.json')])


def test_peak_memory_counts_what_ran_inside():
    import mmap

    from mmddaq.apis.cost import PeakMemory, _proc_status_bytes
    size = 64 * 2**20
    before = _proc_status_bytes('VmRSS')
    with PeakMemory('cpu') as peak:
        # fresh pages (not memory the allocator already holds), all touched
        block = mmap.mmap(-1, size)
        block.write(b'\x01' * size)
    block.close()
    assert peak.bytes >= before + size - 4 * 2**20
    assert peak.megabytes == pytest.approx(peak.bytes / 2**20)


def test_fp_steps_alternate_with_ddaq_iterations_on_a_frozen_teacher(
        tiny_fp_checkpoint):
    import torch

    from mmddaq.apis.cost import (_build_ddaq, _fp_step_fn,
                                  _interleaved_medians)
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    model, optim, plan = _build_ddaq(cfg)
    fp = model.fp_model
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    step = _fp_step_fn(fp, 4, model.input_shape)
    step()
    # the step trained the FP model, then left it a frozen teacher again
    assert any(not torch.equal(before[k], v)
               for k, v in fp.state_dict().items())
    assert not any(p.requires_grad for p in fp.parameters())
    assert not fp.training
    # a DDAQ iteration after it computes no FP weight gradients
    model.train_step(plan, optim)
    assert all(p.grad is None for p in fp.parameters())
    # the timed calls alternate
    calls = []
    medians = _interleaved_medians(
        dict(a=lambda: calls.append('a'), b=lambda: calls.append('b')),
        repeats=3, warmup=1)
    assert calls == ['a', 'b'] * 4 and set(medians) == {'a', 'b'}


def test_recipe_plan_mix_follows_the_schedule():
    from mmddaq.apis.cost import recipe_plan_mix
    # the default recipes: the generator alone, every iteration
    assert recipe_plan_mix(dict(max_iters=400, warmup_iters=400)) == {
        (True, False): 1.0}
    mix = recipe_plan_mix(dict(max_iters=8, warmup_iters=4,
                               generator_interval=2))
    # iterations 0-3 warm-up (generator on 0, 2), 4-7 quantized every one
    assert mix == {(True, False): 0.25, (False, False): 0.25,
                   (True, True): 0.25, (False, True): 0.25}


def test_speed_table_marks_goals():
    bench = _benchmark_module()
    rows = [
        dict(suite='speed', model='m', method='ddaq', w_bits=4, a_bits=4,
             seed=0, metric='iter_over_fp_step', value=3.0, seconds=1.),
        dict(suite='speed', model='m', method='ddaq', w_bits=4, a_bits=4,
             seed=0, metric='fakequant_over_fp_forward', value=1.1,
             seconds=1.),
    ]
    table = bench.markdown_table(rows)
    assert "| m (cpu) | 3.00 (missed) |  | 1.10 (met) |  |" in table
    # a recipe variant (--tag) gets its own line
    variant = [dict(r, method='ddaq-taper32', value=2.0) for r in rows]
    table = bench.markdown_table(rows + variant)
    assert "| m (cpu, ddaq-taper32) | 2.00 (met) |  | 2.00 (missed) |  |" in table
    # seconds-to-quality rows get their own table, one line per method
    rows += [dict(suite='speed', model='m', method=m, w_bits=4, a_bits=4,
                  seed=0, metric='seconds_to_quality', value=v,
                  quality_metric='top1', quality=q, seconds=v)
             for m, v, q in (('ddaq', 90., 98.5), ('gdfq', 60., 97.))]
    table = bench.markdown_table(rows)
    assert '| m | ddaq | 90 | top1 98.5000 |' in table
    assert '| m | gdfq | 60 | top1 97.0000 |' in table
    assert "| m (cpu) | 3.00 (missed) |  | 1.10 (met) |  |" in table
    # a recipe variant (--tag) gets its own line
    variant = [dict(r, method='ddaq-taper32', value=2.0) for r in rows]
    table = bench.markdown_table(rows + variant)
    assert "| m (cpu, ddaq-taper32) | 2.00 (met) |  | 2.00 (missed) |  |" in table


def test_seconds_to_quality_times_ddaq_and_gdfq(tiny_fp_checkpoint,
                                                tmp_path, monkeypatch):
    bench = _benchmark_module()
    suite = dict(bench.SUITES['digits'], fp_checkpoint=tiny_fp_checkpoint)
    monkeypatch.setitem(bench.SUITES, 'digits', suite)
    tiny = tiny_ddaq_options(tiny_fp_checkpoint)
    real_config = bench.method_config
    monkeypatch.setattr(
        bench, 'method_config',
        lambda s, m, o: real_config(s, m, {**o, **tiny}))
    out = str(tmp_path / 'speed.json')
    bench.main(['--suite', 'speed', '--seconds-to-quality', '--models',
                'digits', '--out', out, '--work-root', str(tmp_path)])
    rows = json.load(open(out))
    assert [r['method'] for r in rows] == ['ddaq', 'gdfq']
    for r in rows:
        assert r['metric'] == 'seconds_to_quality' and r['value'] > 0
        assert 0 <= r['quality'] <= 100


def test_runs_in_one_process_keep_their_own_pictures(tiny_fp_checkpoint,
                                                     tmp_path):
    from mmddaq.apis import train_and_test
    cfg = load_config(DDAQ_CONFIG, tiny_ddaq_options(tiny_fp_checkpoint))
    cfg.visualizer.name = 'visualizer'  # as mmdet's default runtime names it
    for run in ('a', 'b'):
        train_and_test(cfg, str(tmp_path / run), run)
    for run in ('a', 'b'):
        pictures = list((tmp_path / run).rglob('generated_samples_*.png'))
        assert pictures, f'run {run} saved no sample pictures'


def test_plot_samples_tool(tmp_path):
    import numpy as np
    from PIL import Image
    spec = importlib.util.spec_from_file_location(
        'mmddaq_plot_samples_tool', osp.join(ROOT, 'tools', 'plot_samples.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    real = tmp_path / 'real'
    real.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(
            real / f'{i}.png')
    grid = tmp_path / 'grid.png'
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(grid)
    out = tmp_path / 'out.png'
    tool.main(['--real', str(real), '--generated', str(grid), '--out',
               str(out)])
    assert out.is_file() and Image.open(out).size[0] > 0
    with pytest.raises(SystemExit, match='does not exist'):
        tool.main(['--real', str(real), '--generated',
                   str(tmp_path / 'missing.png'), '--out', str(out)])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SystemExit, match='no images'):
        tool.main(['--real', str(tmp_path / 'empty'), '--generated',
                   str(grid), '--out', str(out)])


def _ab_module():
    spec = importlib.util.spec_from_file_location(
        'mmddaq_post_training_ab_tool',
        osp.join(ROOT, 'tools', 'post_training_ab.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_post_training_variants_update_or_replace():
    ab = _ab_module()
    hook = dict(type='mmddaq.PostTrainingHook', num_samples=256,
                samples=dict(type='mmddaq.AlgorithmSamples'),
                reconstruction=dict(type='mmddaq.BlockReconstruction',
                                    iters=300, focus=0.05))
    out = ab.apply_variant(hook, {
        'num_samples': 1024,
        'reconstruction': {'iters': 600},
        'samples': {'type': 'mmddaq.GaussianSamples'},
    })
    assert out['num_samples'] == 1024
    assert out['reconstruction'] == dict(type='mmddaq.BlockReconstruction',
                                         iters=600, focus=0.05)
    assert out['samples'] == dict(type='mmddaq.GaussianSamples')
    assert hook['reconstruction']['iters'] == 300  # not changed in place
    assert ab.apply_variant(hook, {'reconstruction': None})[
        'reconstruction'] is None


def test_post_training_ab_restores_the_trained_model(tiny_fp_checkpoint,
                                                     tmp_path, monkeypatch):
    ab = _ab_module()
    bench = ab.bench
    suite = dict(bench.SUITES['digits'], fp_checkpoint=tiny_fp_checkpoint)
    monkeypatch.setitem(bench.SUITES, 'digits', suite)
    tiny = tiny_ddaq_options(tiny_fp_checkpoint)
    real_config = bench.method_config

    def tiny_config(s, m, o):
        cfg = real_config(s, m, {**o, **tiny})
        cfg.custom_hooks = cfg.custom_hooks + [
            dict(type='mmddaq.PostTrainingHook', num_samples=8,
                 batch_size=4,
                 reconstruction=dict(type='mmddaq.BlockReconstruction',
                                     iters=2, batch_size=4))
        ]
        return cfg

    monkeypatch.setattr(bench, 'method_config', tiny_config)

    def fingerprint(runner):
        # the models' state as the "metric": equal only if each variant
        # starts from the models as training left them
        algorithm = ab.algorithm_of(runner)
        states = (algorithm.quantized.state_dict(),
                  algorithm.fp_model.state_dict())
        return {'accuracy/top1': float(sum(
            v.double().sum() for state in states for v in state.values()
            if v.is_floating_point()))}

    monkeypatch.setattr(ab, 'run_test', fingerprint)
    out = str(tmp_path / 'ab.json')
    argv = ['--suite', 'digits', '--split', 'test', '--out', out,
            '--work-root', str(tmp_path / 'runs'),
            '--variant', 'base', '{}',
            # changes the FP model as well (same function, new scales)
            '--variant', 'eq', "{'equalization': {'type': "
            "'mmddaq.StreamEqualization', 'alpha': 1.0}}",
            '--variant', 'again', '{}',
            '--variant', 'calib', "{'reconstruction': None}"]
    ab.main(argv)
    rows = json.load(open(out))
    value = {r['method']: r['value'] for r in rows}
    assert sorted(value) == ['ddaq', 'ddaq-again', 'ddaq-calib', 'ddaq-eq']
    # the same recipe on the same trained model and seed: the same model
    assert value['ddaq'] == value['ddaq-again'] != value['ddaq-calib']
    assert value['ddaq-eq'] != value['ddaq']
    assert all(0 < r['post_training_seconds'] < r['seconds'] for r in rows)
    ab.main(argv)  # finished rows are skipped
    assert len(json.load(open(out))) == len(rows)
    # a tagged run (e.g. other --cfg-options) gets rows of its own
    ab.main(argv[:8] + ['--variant', 'base', '{}', '--tag=-t'])
    assert [r['method'] for r in json.load(open(out))[len(rows):]] == \
        ['ddaq-t']
    with pytest.raises(SystemExit):
        ab.parse_args(['--suite', 'digits', '--out', out,
                       '--variant', 'x', '[1, 2]'])


def test_speed_suite_times_each_given_method(tmp_path, monkeypatch):
    import mmddaq.apis.cost as cost
    bench = _benchmark_module()
    seen = []

    def fake_ratios(cfg, repeats, device):
        # which iterations the timed config runs: the paper's recipe
        # updates the quantized model after its calibration window
        tc = cfg.train_cfg
        seen.append((tc.warmup_iters < tc.max_iters,
                     tc.get('generator_interval', 1)))
        return {m: 1.0 for m in bench.SPEED_METRICS}

    monkeypatch.setattr(cost, 'speed_ratios', fake_ratios)
    monkeypatch.setattr(cost, 'peak_memory_ratio',
                        lambda cfg: dict(peak_mem_over_fp_step=1.0))
    out = str(tmp_path / 'speed.json')
    common = ['--suite', 'speed', '--random-weights', '--models', 'digits',
              '--out', out]
    bench.main(common)  # ddaq alone by default
    bench.main(common + ['--methods', 'ddaq', 'ddaq-kd', '--tag=-gi2',
                         '--cfg-options', 'train_cfg.generator_interval=2'])
    rows = json.load(open(out))
    assert sorted({r['method'] for r in rows}) == [
        'ddaq', 'ddaq-gi2', 'ddaq-kd-gi2']
    # the default trains the generator alone; ddaq-kd fine-tunes by KD
    assert seen == [(False, 1), (False, 2), (True, 2)]
    with pytest.raises(ValueError, match='"fp" is not one'):
        bench.main(common + ['--methods', 'fp'])


def test_w8a8_names_the_methods_it_skips_and_w8a4_runs_them(
        tmp_path, monkeypatch, capsys):
    from mmengine.config import Config
    bench = _benchmark_module()
    ran = []

    def fake_config(suite, method, opts):
        return Config(dict(model=dict(generator=None),
                           train_cfg=dict(max_iters=4, warmup_iters=4)))

    def fake_run(cfg, work_dir, run):
        ran.append(run)
        return {'accuracy/top1': 50., 'seconds': 1.}

    monkeypatch.setattr(bench, 'prepare_suite', lambda suite: 'fp.pth')
    monkeypatch.setattr(bench, 'method_config', fake_config)
    monkeypatch.setattr(bench, 'train_and_test', fake_run)
    common = ['--suite', 'digits', '--seeds', '0', '--methods', 'ptq',
              'genie', '--out', str(tmp_path / 'rows.json'), '--bits', '8']
    bench.main(common)
    assert ran == ['ptq_w8a8_s0']
    assert 'genie is not run at W8A8' in capsys.readouterr().out
    bench.main(common + ['--a-bits', '4'])
    assert ran[1:] == ['ptq_w8a4_s0', 'genie_w8a4_s0']
