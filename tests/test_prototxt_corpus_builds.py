"""Every net in Caffe's prototxt corpus builds once its data layers are given data.

Data layers (Data, ImageData, HDF5Data, WindowData, MemoryData) are replaced
by Input layers of the shapes they would produce; the rest of the net must
build as it is, in each phase it declares.
"""
import glob
import os

import pytest

import caffeine
from caffeine.proto import caffe_pb2
from caffeine.prototxt import read_net_param
from caffeine.testing import shared_dir

SHARED = shared_dir()
FILES = sorted(glob.glob(str(SHARED / 'caffe-reference' / 'prototxt' / '**' / '*.prototxt'), recursive=True)) if SHARED else []
NETS = [f for f in FILES if 'solver' not in os.path.basename(f)]


def _input_shapes(lp):
    """The (data, label) shapes a data layer would produce (small batch)."""
    t = lp.type
    if t == 'Data' or t == 'ImageData' or t == 'WindowData':
        crop = lp.transform_param.crop_size or lp.window_data_param.crop_size
        src = (lp.data_param.source or lp.image_data_param.source or lp.window_data_param.source).lower()
        if 'siamese' in src:
            c, h, w = 2, 28, 28  # image pairs stacked as channels
        elif 'mnist' in src:
            c, h, w = 1, 28, 28
        elif 'cifar' in src:
            c, h, w = 3, 32, 32
        else:
            c, h, w = 3, 256, 256
        if crop:
            h = w = crop
        return [(2, c, h, w), (2,)]
    if t == 'HDF5Data':
        return [(2, 4), (2,)]
    if t == 'MemoryData':
        p = lp.memory_data_param
        return [(2, p.channels, p.height, p.width), (2,)]
    return None


def _with_inputs(param):
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        shapes = _input_shapes(lp)
        if shapes is None:
            continue
        tops = list(lp.top)
        include = [r for r in lp.include]
        name = lp.name
        lp.Clear()
        lp.name, lp.type = name, 'Input'
        lp.top.extend(tops)
        lp.include.extend(include)
        for s in shapes[:len(tops)]:
            lp.input_param.shape.add().dim.extend(s)
    return out


@pytest.mark.skipif(not NETS, reason='../shared prototxt corpus not present')
@pytest.mark.parametrize('path', NETS, ids=[os.path.relpath(f, str(SHARED)) if SHARED else f for f in NETS])
def test_corpus_net_builds(path):
    param = _with_inputs(read_net_param(path))
    if any(l.type == 'Python' for l in param.layer):
        pytest.skip('needs the user Python module it names')
    rules = [r for l in param.layer for r in list(l.include) + list(l.exclude)]
    phases = {r.phase for r in rules if r.HasField('phase')} or {caffeine.TEST}
    stages = sorted({s for r in rules for s in r.stage})
    for phase in sorted(phases):
        for stage in (stages or [None]):
            state = caffe_pb2.NetState(phase=phase, stage=[stage] if stage else [])
            net = caffeine.Net(param, state=state)
            assert len(net.layers) > 0
