"""caffeine export onnx MODEL WEIGHTS OUT.onnx: a Caffe model as ONNX."""
from __future__ import annotations

import os

import click

from ..errors import CaffeineError
from ..net import TEST, Net
from ..onnx_engine import compare, random_inputs
from ..onnx_export import DEFAULT_OPSET, export_onnx
from ..prototxt import read_net_param
from ..zoo import resolve_weights


def _input_shapes(specs):
    """--input NAME=N,C,H,W (repeatable) -> {name: [dims]}."""
    out = {}
    for spec in specs:
        name, sep, dims = spec.partition('=')
        try:
            shape = [int(d) for d in dims.split(',')] if sep else None
        except ValueError:
            shape = None
        if not name or not shape or min(shape) < 1:
            raise CaffeineError('--input %s: expected NAME=N,C,H,W (positive integers)' % spec)
        out[name] = shape
    return out


def _with_input_shapes(param, shapes):
    """The NetParameter with its Input layers' shapes replaced as --input asks."""
    seen = set()
    for lp in param.layer:
        if lp.type != 'Input' or not set(lp.top) & set(shapes):
            continue
        ip = lp.input_param
        if len(ip.shape) == 1:            # one shape for every top: give each its own
            for _ in lp.top[1:]:
                ip.shape.add().CopyFrom(ip.shape[0])
        for j, top in enumerate(lp.top):
            if top in shapes:
                while len(ip.shape) <= j:
                    ip.shape.add()
                del ip.shape[j].dim[:]
                ip.shape[j].dim.extend(shapes[top])
                seen.add(top)
    unknown = sorted(set(shapes) - seen)
    if unknown:
        raise CaffeineError('--input %s: the net has no Input blob of that name' % unknown[0])
    return param


@click.group('export')
def export_group():
    """Write a Caffe model in another format."""


@export_group.command('onnx')
@click.argument('model', type=click.Path())
@click.argument('weights')
@click.argument('output', type=click.Path())
@click.option('--opset', type=int, default=None, help='ONNX opset to write (default 17; 13 or newer).')
@click.option('--input', 'inputs', multiple=True, metavar='NAME=N,C,H,W',
              help='Shape of an input blob (repeatable); default: the prototxt\'s.')
@click.option('--dynamic-batch', is_flag=True, help='Make the inputs\' first dimension symbolic (N).')
@click.option('--keep-intermediate', 'keep', multiple=True, metavar='BLOB[,BLOB...]',
              help='Expose intermediate blobs as extra outputs (for debugging).')
@click.option('--check', is_flag=True,
              help='Run the exported model with onnxruntime on random inputs and compare with caffeine.')
@click.option('--level', type=int, default=0)
@click.option('--stage', multiple=True)
def onnx_cmd(model, weights, output, opset, inputs, dynamic_batch, keep, check, level, stage):
    """Export MODEL (a deploy prototxt) with WEIGHTS (.caffemodel, .h5 or zoo:NAME)
    as OUTPUT (.onnx): the TEST-phase graph, inputs and outputs named after its blobs."""
    if not os.path.exists(model):
        raise CaffeineError('%s: no such file' % model)
    param = _with_input_shapes(read_net_param(model), _input_shapes(inputs))
    stages = [x for s in stage for x in s.split(',') if x]
    net = Net(param, TEST, level=level, stages=stages)
    res = net.copy_from(resolve_weights(weights))
    if not res['copied']:
        raise CaffeineError('%s: no layer name matches a layer of net %r' % (weights, net.name))
    keep = [b for k in keep for b in k.split(',') if b]
    m = export_onnx(net, output, opset=opset or DEFAULT_OPSET, dynamic_batch=dynamic_batch, keep=keep)
    click.echo('wrote %s: opset %d, inputs %s, outputs %s, %d nodes, %.1f MB of weights'
               % (output, m.opset_import[0].version, ', '.join(i.name for i in m.graph.input),
                  ', '.join(o.name for o in m.graph.output), len(m.graph.node),
                  sum(len(t.raw_data) for t in m.graph.initializer) / 1e6))
    if check:
        report = compare(net, output, random_inputs(net, seed=0))
        worst = 0.0
        for blob, (diff, top) in report.items():
            rel = diff / top if top else diff
            worst = max(worst, rel)
            click.echo('check %s: largest difference %.3g (%.3g of the largest magnitude %.3g)'
                       % (blob, diff, rel, top))
        if worst > 1e-4:
            raise CaffeineError('check: onnxruntime differs from caffeine by %.3g of the largest magnitude' % worst)


COMMANDS = [export_group]
