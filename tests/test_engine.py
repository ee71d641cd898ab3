"""The data-free loop's step plans and argument checks."""
import pytest

from mmddaq.engine import DataFreeTrainLoop, GeneratedBatches


class FakeRunner:
    pass


def make_loop(**kwargs):
    kwargs.setdefault('max_iters', 10)
    return DataFreeTrainLoop(FakeRunner(), dataloader={}, **kwargs)


def test_plan_warmup_and_intervals():
    loop = make_loop(max_iters=8, batch_size=16, warmup_iters=3,
                     generator_interval=2, quantized_interval=1)
    plans = [loop.plan(i) for i in range(8)]
    assert all(p['batch_size'] == 16 for p in plans)
    assert [p['update_quantized'] for p in plans] == [False] * 3 + [True] * 5
    assert [p['update_generator'] for p in plans] == [True, False] * 4
    loop = make_loop(max_iters=6, quantized_interval=3)
    assert [loop.plan(i)['update_quantized'] for i in range(6)] == \
        [True, False, False, True, False, False]


def test_generated_batches_stand_in_for_a_dataloader():
    loop = make_loop(max_iters=7, batch_size=4)
    assert isinstance(loop.dataloader, GeneratedBatches)
    assert len(loop.dataloader) == 7 and loop.dataloader.batch_size == 4
    assert loop.dataloader.dataset.metainfo == {}
    assert loop.max_iters == 7 and loop.iter == 0


@pytest.mark.parametrize('kwargs, match', [
    (dict(max_iters=0), 'max_iters'),
    (dict(batch_size=0), 'batch_size'),
    (dict(generator_interval=0), 'generator_interval'),
    (dict(warmup_iters=11), 'warmup_iters'),
    (dict(warmup_iters=-1), 'warmup_iters'),
])
def test_bad_loop_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loop(**kwargs)
