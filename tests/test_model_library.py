"""The model library: every model in models/ has a train_val and a deploy net
that build, parameters named and shaped like the published Caffe weights,
and a solver in solvers/ that points at it."""
import os

import numpy as np
import pytest

import caffeine
from caffeine.prototxt import read_net_param, read_solver_param
from caffeine.solver import solver_class
from caffeine.testing import data_layers_as_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# model dir, solver file, learnable parameters of the deploy net (the
# published counts: LeNet and CIFAR-10 from Caffe's examples, the ImageNet
# models from their papers / the released .caffemodel files).
LIBRARY = [
    ('lenet', 'lenet_solver.prototxt', 431080),
    ('cifar10_quick', 'cifar10_quick_solver.prototxt', 145578),
    ('cifar10_full', 'cifar10_full_solver.prototxt', 89578),
    ('bvlc_reference_caffenet', 'bvlc_reference_caffenet_solver.prototxt', 60965224),
    ('bvlc_alexnet', 'bvlc_alexnet_solver.prototxt', 60965224),
    ('bvlc_googlenet', 'bvlc_googlenet_solver.prototxt', 6998552),
    ('vgg16', 'vgg16_solver.prototxt', 138357544),
    ('resnet50', 'resnet50_solver.prototxt', 25557032),
    ('squeezenet1.1', 'squeezenet1.1_solver.prototxt', 1235496),
]


def _param_shapes(net):
    return {name: [tuple(b.shape) for b in layer.blobs]
            for name, layer in zip(net.layer_names, net.layers) if len(layer.blobs)}


def _learnable(net):
    # BatchNorm's blobs (mean, variance, factor) are statistics, not weights.
    return sum(int(np.prod(b.shape)) for layer in net.layers if layer.type != 'BatchNorm'
               for b in layer.blobs)


@pytest.mark.parametrize('model,solver,nparams', LIBRARY, ids=[m for m, _, _ in LIBRARY])
def test_model_has_train_val_deploy_and_solver(model, solver, nparams):
    d = os.path.join(ROOT, 'models', model)
    sp = read_solver_param(os.path.join(ROOT, 'solvers', solver))
    assert sp.net == 'models/%s/train_val.prototxt' % model
    assert os.path.exists(os.path.join(ROOT, sp.net))
    solver_class(sp.type or 'SGD')  # a known solver type
    assert sp.max_iter > 0 and sp.base_lr > 0 and sp.test_iter and sp.test_interval > 0

    deploy = caffeine.Net(data_layers_as_inputs(read_net_param(os.path.join(d, 'deploy.prototxt')), batch=1,
                                                input_batch=1), caffeine.TEST)
    assert _learnable(deploy) == nparams
    shapes = _param_shapes(deploy)
    tv = read_net_param(os.path.join(d, 'train_val.prototxt'))
    for phase in (caffeine.TRAIN, caffeine.TEST):
        net = caffeine.Net(data_layers_as_inputs(tv, batch=1, input_batch=1), phase)
        if phase == caffeine.TRAIN:
            assert any(net.blob_loss_weights[o] for o in net.outputs), net.outputs
        else:
            assert any('accuracy' in o or 'top-1' in o for o in net.outputs), net.outputs
        # train_val's parameter layers carry the same names and shapes as
        # deploy's, so one set of weights serves both.
        got = _param_shapes(net)
        for name, s in shapes.items():
            assert got.get(name) == s, (phase, name)
        del net


def test_lenet_solver_is_caffes():
    sp = read_solver_param(os.path.join(ROOT, 'solvers', 'lenet_solver.prototxt'))
    assert (sp.base_lr, sp.momentum, sp.weight_decay, sp.lr_policy, sp.gamma, sp.power) == \
        (pytest.approx(0.01), pytest.approx(0.9), pytest.approx(0.0005), 'inv', pytest.approx(1e-4), pytest.approx(0.75))
    assert (sp.test_iter[0], sp.test_interval, sp.max_iter, sp.display) == (100, 500, 10000, 100)


# SSD detectors (deploy nets only, no train_val): model, classes with background, input shape
DETECTORS = [('face_detector_res10', 2, (1, 3, 300, 300)), ('mobilenet_ssd', 21, (1, 3, 300, 300))]


@pytest.mark.parametrize('model,classes,shape', DETECTORS, ids=[m for m, _, _ in DETECTORS])
def test_detector_deploy_builds_and_detects(model, classes, shape):
    net = caffeine.Net(os.path.join(ROOT, 'models', model, 'deploy.prototxt'), caffeine.TEST)
    assert net.blobs['data'].data.shape == shape
    det = [layer for layer in net.layers if layer.type == 'DetectionOutput'][0]
    assert det.num_classes == classes
    out = net.forward()['detection_out']
    assert out.shape[:2] == (1, 1) and out.shape[3] == 7
