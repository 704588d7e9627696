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
from caffeine.testing import data_layers_as_inputs, shared_dir

SHARED = shared_dir()
FILES = sorted(glob.glob(str(SHARED / 'caffe-reference' / 'prototxt' / '**' / '*.prototxt'), recursive=True)) if SHARED else []
NETS = [f for f in FILES if 'solver' not in os.path.basename(f)]


@pytest.mark.skipif(not NETS, reason='../shared prototxt corpus not present')
@pytest.mark.parametrize('path', NETS, ids=[os.path.relpath(f, str(SHARED)) if SHARED else f for f in NETS])
def test_corpus_net_builds(path):
    param = data_layers_as_inputs(read_net_param(path))
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
