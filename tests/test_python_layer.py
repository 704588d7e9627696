"""Python layers (type: "Python"), as pycaffe's PythonLayer."""
import sys
import textwrap

import numpy as np
import pytest

import caffeine
from caffeine.errors import LayerError

MODULE = textwrap.dedent('''
    import numpy as np
    import caffeine as caffe

    class ScaleBy(caffe.Layer):
        """top = k * bottom, k from param_str; one learnable offset blob."""
        def setup(self, bottom, top):
            self.k = float(self.param_str or 1)
            if len(bottom) != 1:
                raise Exception('one bottom')
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = 0.5

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.k * bottom[0].data + self.blobs[0].data[0]

        def backward(self, top, propagate_down, bottom):
            if propagate_down[0]:
                bottom[0].diff[...] = self.k * top[0].diff
            self.blobs[0].diff[0] += top[0].diff.sum()

    class NotALayer(object):
        pass
''')

NET = '''
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "py" type: "Python" bottom: "x" top: "y"
        python_param { module: "%s" layer: "%s" param_str: "3" } }
'''


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    name = 'caffeine_test_pylayers_%d' % id(tmp_path)
    (tmp_path / (name + '.py')).write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_python_layer_forward_backward_and_params(pymod):
    net = caffeine.Net(NET % (pymod, 'ScaleBy'), caffeine.TRAIN)
    layer = net.layer_dict['py']
    assert layer.type == 'Python' and layer.param_str == '3' and layer.phase == caffeine.TRAIN
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(x=x)
    np.testing.assert_allclose(out['y'], 3 * x + 0.5)
    net.blobs['y'].diff[...] = 1
    net.layer_dict['py'].blobs[0].diff[...] = 0
    net.backward()
    np.testing.assert_allclose(net.blobs['x'].diff, 3)
    assert float(net.params['py'][0].diff[0]) == 6


def test_python_layer_weights_round_trip(pymod, tmp_path):
    net = caffeine.Net(NET % (pymod, 'ScaleBy'), caffeine.TRAIN)
    net.params['py'][0].data[...] = 7
    net.save(str(tmp_path / 'py.caffemodel'))
    other = caffeine.Net(NET % (pymod, 'ScaleBy'), caffeine.TEST, weights=str(tmp_path / 'py.caffemodel'))
    assert float(other.params['py'][0].data[0]) == 7


def test_python_layers_can_be_refused(pymod, monkeypatch):
    monkeypatch.setenv('CAFFEINE_NO_PYTHON_LAYERS', '1')
    with pytest.raises(LayerError, match="Python layers are disabled.*would import module"):
        caffeine.Net(NET % (pymod, 'ScaleBy'), caffeine.TRAIN)


def test_bad_python_param_errors(pymod):
    with pytest.raises(LayerError, match="cannot import module 'no_such_module_xyz'"):
        caffeine.Net(NET % ('no_such_module_xyz', 'X'), caffeine.TRAIN)
    with pytest.raises(LayerError, match="has no class 'Missing'"):
        caffeine.Net(NET % (pymod, 'Missing'), caffeine.TRAIN)
    with pytest.raises(LayerError, match='not a subclass of caffeine.Layer'):
        caffeine.Net(NET % (pymod, 'NotALayer'), caffeine.TRAIN)


def test_refusal_reaches_a_fresh_process(pymod, tmp_path):
    import os
    import subprocess
    p = tmp_path / 'net.prototxt'
    p.write_text(NET % (pymod, 'ScaleBy'))
    r = subprocess.run([sys.executable, '-c', 'import caffeine,sys; caffeine.Net(sys.argv[1], caffeine.TEST)', str(p)],
                       capture_output=True, text=True,
                       env={**os.environ, 'CAFFEINE_NO_PYTHON_LAYERS': '1', 'PYTHONPATH': str(tmp_path)})
    assert r.returncode != 0 and 'Python layers are disabled' in r.stderr
