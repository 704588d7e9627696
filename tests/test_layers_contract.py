"""The layer contract: what every layer answers (layer.py), the registry's type names,
the in-place input a neuron layer keeps, the random-number policy (backend.py), the
shared axis rule (layers/_util.py) and the data-source contract (data/prefetch.py)."""
import numpy as np
import pytest

import caffeine
from caffeine import backend, layer as layer_mod
from caffeine.blob import Blob
from caffeine.data.prefetch import DataSource, Prefetcher
from caffeine.errors import LayerError
from caffeine.layer import Layer, register
from caffeine.layers._util import canonical_axis, shape_count
from caffeine.testing import backward_layer, blobs_from_arrays, forward_layer, make_layer


@pytest.fixture
def scratch_types():
    """Layer types registered by a test are removed afterwards."""
    before = dict(layer_mod._REGISTRY)
    yield
    layer_mod._REGISTRY.clear()
    layer_mod._REGISTRY.update(before)


def test_registered_subclass_reports_its_own_type(scratch_types):
    @register('ContractParent')
    class Parent(Layer):
        pass

    @register('ContractChild', 'ContractChildAlias')
    class Child(Parent):
        pass

    @register('ContractNamed')
    class Named(Parent):
        type_name = 'ContractOwnName'

    assert Parent.type_name == 'ContractParent'
    assert Child.type_name == 'ContractChild'
    assert Named.type_name == 'ContractOwnName'
    assert make_layer('type: "ContractChildAlias"').type == 'ContractChild'
    assert make_layer('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 1 }').type == 'Deconvolution'


def test_every_layer_answers_the_hooks():
    layer = make_layer('type: "ReLU"')
    assert layer.get_state() is None
    assert layer.set_state({'anything': 1}) is None
    assert layer.close() is None
    layer.close()                                   # idempotent
    assert layer.force_zero_lr is False and layer.is_data_layer is False and layer.need_backward is True
    assert make_layer('type: "BatchNorm"').force_zero_lr is True
    assert make_layer('type: "DummyData" dummy_data_param { shape { dim: 1 } }').is_data_layer is True


def test_neuron_layer_in_place_then_not_uses_the_right_input(mode):
    """The base class decides at every forward whether the input was kept: a layer
    run in place and then on separate blobs takes its gradient from the new input."""
    text = 'type: "ReLU" relu_param { negative_slope: -0.5 }'
    x1 = np.array([[-2.0, 1.0, 3.0]], np.float32)
    x2 = np.array([[4.0, -1.0, -3.0]], np.float32)
    dy = np.ones((1, 3), np.float32)
    layer, bottom, top = forward_layer(text, x1, in_place=True)
    np.testing.assert_array_equal(top[0].data, [[1.0, 1.0, 3.0]])
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_array_equal(dx, [[-0.5, 1.0, 1.0]])
    bottom, top = blobs_from_arrays(x2), [Blob()]
    layer.Forward(bottom, top)
    dx, = backward_layer(layer, bottom, top, dy)
    np.testing.assert_array_equal(dx, [[1.0, -0.5, -0.5]])


def test_neuron_layer_keeps_no_input_when_backward_never_runs(mode):
    layer = make_layer('type: "AbsVal"')
    layer.need_backward = False
    bottom = blobs_from_arrays(np.array([-1.0, 2.0], np.float32))
    layer.SetUp(bottom, bottom)
    layer.Forward(bottom, bottom)
    np.testing.assert_array_equal(bottom[0].data, [1.0, 2.0])
    assert layer._saved_input is None


def test_uniform_follows_the_seed(mode):
    a, b = backend.empty((1000,)), backend.empty((1000,))
    caffeine.set_random_seed(11)
    backend.uniform(a)
    caffeine.set_random_seed(11)
    backend.uniform(b)
    ha = backend.to_host(a)
    np.testing.assert_array_equal(ha, backend.to_host(b))
    assert ha.dtype == np.float32 and ha.min() >= 0 and ha.max() < 1 and 0.45 < ha.mean() < 0.55


def test_child_rng_follows_the_seed_and_advances_the_main_generator():
    caffeine.set_random_seed(5)
    first = backend.child_rng().integers(0, 1 << 30, size=4)
    after = backend.rng().integers(0, 1 << 30)
    caffeine.set_random_seed(5)
    np.testing.assert_array_equal(backend.child_rng().integers(0, 1 << 30, size=4), first)
    assert backend.rng().integers(0, 1 << 30) == after


@pytest.mark.parametrize('axis, want', [(0, 0), (2, 2), (-1, 2), (-3, 0)])
def test_canonical_axis(axis, want):
    assert canonical_axis(make_layer('type: "Softmax"'), Blob(2, 3, 4), axis) == want


@pytest.mark.parametrize('axis', [3, -4])
def test_canonical_axis_out_of_range_names_the_layer(axis):
    with pytest.raises(LayerError, match=r"^layer 'layer' \(Softmax\): axis %d out of range for a 3-D bottom "
                                         r"of shape \[2, 3, 4\]$" % axis):
        canonical_axis(make_layer('type: "Softmax"'), Blob(2, 3, 4), axis)


def test_canonical_axis_of_a_scalar_is_an_error():
    with pytest.raises(LayerError, match='axis 0 out of range for a 0-D bottom'):
        canonical_axis(make_layer('type: "Softmax"'), Blob(), 0)


def test_shape_count():
    assert shape_count((2, 3, 4)) == 24
    assert shape_count((2, 3, 4), 1) == 12
    assert shape_count((2, 3, 4), 0, 2) == 6
    assert shape_count(()) == 1


class _Counter(DataSource):
    """Batch k holds the value k; the position is the next k."""

    def __init__(self):
        self.next_k = 0
        self.closed = 0

    def claim(self, k):
        self.next_k = k + 1
        return k

    def make(self, job, slot):
        slot.buffer(0, (2,))[:] = job

    def get_state(self):
        return {'next': self.next_k}

    def set_state(self, state):
        self.next_k = state['next']

    def close(self):
        self.closed += 1


@pytest.mark.parametrize('slots', [0, 2])
def test_prefetcher_keeps_or_closes_the_source(slots):
    src = _Counter()
    pf = Prefetcher('test', src.claim, src.make, slots=slots, close_hook=src.close)
    for k in range(3):
        slot = pf.next()
        np.testing.assert_array_equal(slot.data(0), [k, k])
        pf.release(slot)
    pf.close(keep_source=True)
    assert pf.closed and pf.stopped and src.closed == 0
    pf2 = Prefetcher('test', src.claim, src.make, slots=slots, close_hook=src.close)
    pf2.close()
    pf2.close()
    assert src.closed == 1


def test_data_source_is_abstract():
    src = DataSource()
    for call in (lambda: src.claim(0), lambda: src.make(None, None), src.get_state, lambda: src.set_state({})):
        with pytest.raises(NotImplementedError):
            call()
    assert src.close() is None
