"""Layer types caffeine does not support: one error names every such layer, its type and,
where known, the fork it comes from, before the first unknown ``*_param`` field of a fork's
layer is reported, and without a "did you mean" for a fork's type."""
import pytest

import caffeine
from caffeine.errors import LayerError, PrototxtError
from caffeine.prototxt import read_net_param
from caffeine.unsupported import FORK_LAYERS, fork_of

NET = '''name: "flow"
input: "a" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
input: "b" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
%s
'''
CORR = ('layer { name: "%s" type: "Correlation" bottom: "a" bottom: "b" top: "%s" '
        'correlation_param { pad: 20 kernel_size: 1 max_displacement: 20 } }')


def _net_file(tmp_path, layers):
    path = tmp_path / 'net.prototxt'
    path.write_text(NET % '\n'.join(layers))
    return str(path)


def test_a_fork_layer_with_its_own_param_names_the_layer_and_its_fork(tmp_path):
    path = _net_file(tmp_path, [CORR % ('corr', 'corr')])
    with pytest.raises(LayerError) as e:
        caffeine.Net(path, caffeine.TEST)
    msg = str(e.value)
    assert msg == "%s: layer 'corr' (type 'Correlation', from FlowNet2's Caffe) is not supported" % path
    assert 'correlation_param' not in msg and 'did you mean' not in msg and '\n' not in msg


def test_every_unsupported_layer_is_reported_at_once(tmp_path):
    path = _net_file(tmp_path, [
        CORR % ('corr1', 'c1'), CORR % ('corr2', 'c2'),
        'layer { name: "warp" type: "FlowWarp" bottom: "b" bottom: "c1" top: "w" }',
        'layer { name: "pool" type: "Poolng" bottom: "w" top: "p" }',
        'layer { name: "relu" type: "ReLU" bottom: "p" top: "p" }'])
    with pytest.raises(LayerError) as e:
        read_net_param(path)
    msg = str(e.value)
    assert msg.startswith(path + ': 3 layer types are not supported: ')
    assert "layers 'corr1', 'corr2' (type 'Correlation', from FlowNet2's Caffe)" in msg
    assert "layer 'warp' (type 'FlowWarp', from FlowNet2's Caffe)" in msg
    assert "layer 'pool': unknown layer type 'Poolng' (did you mean 'Pooling'" in msg
    assert 'relu' not in msg


def test_a_net_message_with_fork_layers_fails_before_building_any():
    param = read_net_param(NET % '\n'.join([
        'layer { name: "warp" type: "FlowWarp" bottom: "a" bottom: "b" top: "w" }',
        'layer { name: "bn" type: "SomethingElse" bottom: "w" top: "w2" }']))
    with pytest.raises(LayerError, match="2 layer types are not supported: layer 'warp' \\(type 'FlowWarp', "
                                         "from FlowNet2's Caffe\\); layer 'bn': unknown layer type 'SomethingElse'"):
        caffeine.Net(param, caffeine.TEST)


def test_a_misspelt_bvlc_type_still_gets_its_hint():
    with pytest.raises(LayerError, match="layer 'c': unknown layer type 'Convolutoin'; did you mean 'Convolution'"):
        caffeine.Net(NET % 'layer { name: "c" type: "Convolutoin" bottom: "a" top: "c" }', caffeine.TEST)


def test_an_unknown_field_of_a_supported_layer_is_still_a_parse_error(tmp_path):
    path = _net_file(tmp_path, ['layer { name: "r" type: "ReLU" bottom: "a" top: "r" relu_parm { } }'])
    with pytest.raises(PrototxtError, match=r'net\.prototxt:4:\d+: .*relu_parm'):
        read_net_param(path)


def test_fork_table():
    assert fork_of('Correlation') == "FlowNet2's Caffe"
    assert fork_of('Convolution') is None
    for type_name, fork in FORK_LAYERS.items():
        assert type_name and fork and '\n' not in fork
