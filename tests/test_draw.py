"""caffeine.draw (pycaffe's caffe.draw) and `caffeine draw`."""
import shutil
import subprocess
import sys

import pytest

import caffeine as caffe
from caffeine import layers as L, params as P
from caffeine.proto import caffe_pb2

needs_dot = pytest.mark.skipif(shutil.which('dot') is None, reason="Graphviz's dot is not installed")
PNG = b'\x89PNG\r\n\x1a\n'


def _net():
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source='train_lmdb', batch_size=64, ntop=2, include=dict(phase=caffe.TRAIN))
    n.conv1 = L.Convolution(n.data, kernel_size=5, stride=2, pad=1, num_output=20,
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.ip1 = L.InnerProduct(n.relu1, num_output=10)
    n.acc = L.Accuracy(n.ip1, n.label, include=dict(phase=caffe.TEST))
    n.loss = L.SoftmaxWithLoss(n.ip1, n.label)
    proto = n.to_proto()
    proto.name = 'TinyNet'
    return proto


def _unq(value):
    """An attribute without the quotes some pydot versions keep."""
    return str(value).strip('"')


def _nodes(graph):
    return {node.get_name(): node for node in graph.get_nodes()}


def test_graph_has_a_node_per_layer_and_blob_and_an_edge_per_connection():
    pytest.importorskip('pydot')
    from caffeine.draw import get_pydot_graph
    proto = _net()
    g = get_pydot_graph(proto, 'LR')
    assert g.get_name() == 'TinyNet' and g.get_rankdir() == 'LR'
    nodes = _nodes(g)
    blobs = {b for l in proto.layer for b in list(l.bottom) + list(l.top)}
    assert len(nodes) == len(proto.layer) + len(blobs)
    for b in blobs:
        assert nodes[b].get_shape() == 'octagon'
    conv = nodes['"conv1\\n(Convolution)\\nkernel size: 5\\nstride: 2\\npad: 1"']
    assert _unq(conv.get_fillcolor()) == '#FF5050' and conv.get_shape() == 'record'
    assert _unq(nodes['"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"'].get_fillcolor()) == '#FF9900'
    assert _unq(nodes['"ip1\\n(InnerProduct)"'].get_fillcolor()) == '#CC33FF'
    assert _unq(nodes['"relu1\\n(ReLU)"'].get_fillcolor()) == '#90EE90'         # in place
    assert _unq(nodes['"loss\\n(SoftmaxWithLoss)"'].get_fillcolor()) == '#6495ED'
    edges = g.get_edges()
    assert len(edges) == sum(len(l.bottom) + len(l.top) for l in proto.layer)
    labels = {(e.get_source(), e.get_destination()): e.get_label() for e in edges}
    assert _unq(labels[('"data\\n(Data)"', 'label')]) == 'Batch 64'
    assert _unq(labels[('"ip1\\n(InnerProduct)"', 'ip1')]) == '10'
    assert _unq(labels[('conv1', '"pool1\\n(Pooling MAX)\\nkernel size: 2\\nstride: 2\\npad: 0"')]) == ''
    # the DOT source is valid enough for pydot to read back
    import warnings
    import pydot
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')     # pyparsing deprecations inside pydot's parser
        again = pydot.graph_from_dot_data(g.to_string())[0]
    assert len(again.get_edges()) == len(edges)


def test_graph_phase_rankdir_lrm_and_unlabelled_edges():
    pytest.importorskip('pydot')
    from caffeine.draw import get_pydot_graph, get_layer_lr_mult
    proto = _net()
    test_nodes = _nodes(get_pydot_graph(proto, 'LR', phase=caffe.TEST))
    assert '"data\\n(Data)"' not in test_nodes and '"acc\\n(Accuracy)"' in test_nodes
    train_nodes = _nodes(get_pydot_graph(proto, 'LR', phase=caffe.TRAIN))
    assert '"data\\n(Data)"' in train_nodes and '"acc\\n(Accuracy)"' not in train_nodes
    assert '"acc\\n(Accuracy)"' in _nodes(get_pydot_graph(proto, 'LR', phase='ALL'))
    tb = _nodes(get_pydot_graph(proto, 'TB', display_lrm=True))
    assert '"conv1 (Convolution) kernel size: 5 stride: 2 pad: 1 lr mult: 1.0, 2.0"' in tb
    assert '"ip1 (InnerProduct) lr mult: 1.0, 1.0"' in tb
    assert get_layer_lr_mult(proto.layer[1]) == (1.0, 2.0)
    g = get_pydot_graph(proto, 'LR', label_edges=False)
    assert all(_unq(e.get_label()) == '' for e in g.get_edges() if e.get_source().startswith('"'))
    bad = caffe_pb2.NetParameter()
    layer = bad.layer.add(name='x', type='ReLU')
    layer.include.add(phase=caffe.TRAIN)
    layer.exclude.add(phase=caffe.TEST)
    with pytest.raises(ValueError, match='both include and exclude'):
        get_pydot_graph(bad, 'LR', phase=caffe.TRAIN)


def test_missing_pydot_and_missing_graphviz(monkeypatch, tmp_path):
    from caffeine import draw
    monkeypatch.setitem(sys.modules, 'pydot', None)
    with pytest.raises(caffe.CaffeineError, match='needs pydot'):
        draw.get_pydot_graph(_net(), 'LR')
    monkeypatch.undo()
    pytest.importorskip('pydot')
    monkeypatch.setattr(draw.shutil, 'which', lambda name: None)
    with pytest.raises(caffe.CaffeineError, match="needs Graphviz's 'dot'"):
        draw.draw_net(_net(), 'LR', ext='png')
    # the DOT source needs no Graphviz
    out = tmp_path / 'net.dot'
    draw.draw_net_to_file(_net(), str(out))
    assert out.read_text().startswith('digraph TinyNet {')
    with pytest.raises(caffe.CaffeineError, match='no extension'):
        draw.draw_net_to_file(_net(), str(tmp_path / 'net'))


@needs_dot
def test_render_png_and_svg(tmp_path):
    pytest.importorskip('pydot')
    from caffeine.draw import draw_net, draw_net_to_file
    assert draw_net(_net(), 'LR', ext='png').startswith(PNG)
    out = tmp_path / 'net.svg'
    draw_net_to_file(_net(), str(out), rankdir='TB', phase=caffe.TEST, display_lrm=True)
    assert '<svg' in out.read_text()


def test_cli_draw(tmp_path):
    pytest.importorskip('pydot')
    model = tmp_path / 'net.prototxt'
    model.write_text(str(_net()))
    out = tmp_path / 'net.dot'
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'draw', str(model), str(out),
                        '--rankdir', 'TB', '--phase', 'TEST', '--display-lrm'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'conv1 (Convolution)' in out.read_text() and 'data (Data)' not in out.read_text()
    r = subprocess.run([sys.executable, '-m', 'caffeine', 'draw', str(tmp_path / 'missing.prototxt'),
                        str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith('caffeine: error:') and 'Traceback' not in r.stderr
    if shutil.which('dot'):
        png = tmp_path / 'net.png'
        r = subprocess.run([sys.executable, '-m', 'caffeine', 'draw', str(model), str(png)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert png.read_bytes().startswith(PNG)
