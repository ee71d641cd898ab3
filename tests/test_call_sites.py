"""One activation range per call site for layers run several times per
forward (RetinaNet head convs shared by the FPN levels)."""
import onnx
import torch
from torch import nn

from mmddaq.export import (build_export_network, export_onnx, network_of,
                           onnxruntime_session, run_onnxruntime)
from mmddaq.quantization import (BlockReconstruction, CallSiteQuantizer,
                                 ModelQuantizer, activation_quantizers,
                                 calibrate_activations, dense_head_levels,
                                 freeze_activations, observation_disabled,
                                 step_activation_observers)
from mmddaq.quantization.reconstruction import call_site
from test_export import assert_close, calibrate, check_qdq_graph

SCALES = (1., 10., 100.)


class SharedHead(nn.Module):
    """One conv applied to three 'levels' whose scales differ 100x."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return [self.conv(x * s) for s in SCALES]


class Model(nn.Module):

    def __init__(self):
        super().__init__()
        self.head = SharedHead()

    def forward(self, x):
        return self.head(x)


def quantized_pair(call_sites, bits=4):
    torch.manual_seed(0)
    fp = Model().eval()
    q = ModelQuantizer(w_bits=8, a_bits=bits, input_bits=None,
                       call_sites=call_sites).quantize(fp)
    gen = torch.Generator().manual_seed(1)
    calibrate_activations(q)
    with torch.no_grad():
        for _ in range(3):
            q(torch.randn(8, 4, 8, 8, generator=gen))
            step_activation_observers(q)
    freeze_activations(q)
    return fp, q


def relative_errors(fp, q, x):
    with torch.no_grad(), observation_disabled(q):
        return [float((a - b).pow(2).mean() / b.pow(2).mean())
                for a, b in zip(q(x), fp(x))]


def test_one_range_per_call_lowers_the_small_levels_error():
    x = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    fp, shared = quantized_pair(None)
    _, sites = quantized_pair({'head': len(SCALES)})
    quantizer = sites.head.conv.act_quantizer
    assert isinstance(quantizer, CallSiteQuantizer)
    assert quantizer.num_sites == len(SCALES)
    assert len(activation_quantizers(sites)) == len(SCALES)
    widths = [float(s.observer.max_val - s.observer.min_val)
              for s in quantizer.sites]
    # each site's range follows its level's scale
    assert widths[0] * 5 < widths[1] and widths[1] * 5 < widths[2]
    err_shared = relative_errors(fp, shared, x)
    err_sites = relative_errors(fp, sites, x)
    assert err_sites[0] < err_shared[0] / 10
    assert err_sites[-1] <= err_shared[-1] * 1.5
    # the turn restarts at each forward of the owning module
    with torch.no_grad(), observation_disabled(sites):
        sites(x)
        sites.head.conv(x)  # a stray call outside a forward
        again = sites(x)
    assert relative_errors(fp, sites, x) == err_sites
    assert len(again) == len(SCALES)


def test_state_dict_round_trip_and_names():
    _, q = quantized_pair({'head': 3})
    fresh = ModelQuantizer(w_bits=8, a_bits=4, input_bits=None,
                           call_sites={'head': 3}).quantize(Model())
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad(), observation_disabled(q):
        for a, b in zip(q(x), fresh(x)):
            assert torch.equal(a, b)
    names = [s.layer_name for s in q.head.conv.act_quantizer.sites]
    assert names == [f'head.conv@call {k}' for k in range(3)]


def test_bad_call_sites_are_refused():
    import pytest
    with pytest.raises(ValueError, match='call_sites'):
        ModelQuantizer(call_sites='everywhere')
    with pytest.raises(ValueError, match='not a module'):
        ModelQuantizer(call_sites={'neck': 5}).quantize(Model())


def test_forced_site_and_reconstruction():
    fp, q = quantized_pair({'head': 3})
    x = torch.randn(4, 4, 8, 8)
    conv = q.head.conv
    with torch.no_grad(), observation_disabled(q):
        expected = q(x)[2]
        with call_site(conv, 2):
            assert torch.equal(conv(x * SCALES[2]), expected)
    batches = [torch.randn(8, 4, 8, 8) for _ in range(2)]
    results = BlockReconstruction(iters=30, batch_size=8, log_interval=0)(
        fp, q, lambda m, b: m(b), batches)
    assert [r['name'] for r in results] == ['head.conv']
    assert results[0]['error_after'] <= results[0]['error_before']


def test_retinanet_dense_heads_export_exactly(tmp_path):
    from test_detection import SIZE, build
    model, _ = build(
        'retinanet', tmp_path,
        quantizer=dict(type='mmddaq.ModelQuantizer', w_bits=8, a_bits=8,
                       call_sites='dense_heads'))
    model.eval()
    levels = dense_head_levels(model.quantized)
    assert levels == {'bbox_head': 5}
    head_conv = model.quantized.bbox_head.cls_convs[0].conv
    assert head_conv.act_quantizer.num_sites == 5
    network = network_of(model.quantized)
    calibrate(network, (2, 3, SIZE, SIZE))
    out = str(tmp_path / 'retina_sites.onnx')
    export_onnx(model.quantized, out, (3, SIZE, SIZE))
    check_qdq_graph(out)
    graph = onnx.load(out).graph
    activation_q = [n for n in graph.node if n.op_type == 'QuantizeLinear']
    head_layers = sum(1 for n, m in model.quantized.bbox_head.named_modules()
                      if hasattr(m, 'act_quantizer'))
    rest = len(activation_q) - 5 * head_layers
    assert rest > 0  # backbone and neck: one Q/DQ per layer
    export_net, _ = build_export_network(network,
                                         torch.randn(1, 3, SIZE, SIZE))
    assert sum(1 for m in export_net.modules()
               if type(m).__name__ == 'QDQActivation') == \
        len(activation_q)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad(), observation_disabled(network):
        reference = network(x)
    outputs = run_onnxruntime(onnxruntime_session(out, quantize_bias=False),
                              x)
    assert_close(reference, outputs)
