"""Whole networks from Caffe's corpus against the real BVLC Caffe 1.0.

Every blob after the forward pass, and every parameter gradient after the
backward pass, equals Caffe's within 1e-4 of the array's largest magnitude.
Skipped when ../shared is absent.  Each net runs on both convolution algorithms
of the engine: Winograd F(2x2,3x3) wherever the geometry allows it (every 3x3
stride-1 ungrouped convolution, whatever its channel counts and output size), and im2col + GEMM
everywhere.
"""
import pytest

from caffeine.layers import conv_engine
from caffeine.testing import check_golden_net, golden_cases

CASES = golden_cases(kind='nets')


@pytest.mark.skipif(not CASES, reason='../shared golden cases not present')
@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('algorithm', ['winograd', 'im2col'])
def test_golden_net(case, mode, algorithm, monkeypatch):
    monkeypatch.setattr(conv_engine, 'WINOGRAD', algorithm == 'winograd')
    monkeypatch.setattr(conv_engine, 'WINOGRAD_ON_GPU', True)  # on CuPy too, where a GPU is present
    monkeypatch.setattr(conv_engine, 'WINOGRAD_MIN_CHANNELS', 1)
    monkeypatch.setattr(conv_engine, 'WINOGRAD_MAX_WASTE', 1e9)
    monkeypatch.setattr(conv_engine, 'WINOGRAD_MIN_TILES', 1)   # within im2col's workspace at any cost
    monkeypatch.setattr(conv_engine, 'WINOGRAD_MIN_BLOCK', 1)
    net = check_golden_net(case, rtol=1e-4)
    convs = [layer.engine for layer in net.layers if layer.type == 'Convolution']
    if case in ('caffenet_deploy', 'googlenet_deploy'):  # they have 3x3 stride-1 convolutions
        assert any(e.winograd for e in convs) == (algorithm == 'winograd')
