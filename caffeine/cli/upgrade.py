"""caffeine upgrade net|solver|weights IN OUT

Caffe's upgrade_net_proto_text, upgrade_solver_proto_text and
upgrade_net_proto_binary: read a file in one of Caffe's older formats and write
it in the current one.  A file that is already current is written unchanged.
"""
import os

import click
from ..proto import caffe_pb2
from ..prototxt import parse_text, read_binary, read_text, write_text
from ..upgrade import apply_net_upgrades, apply_solver_upgrades
from ..utils import atomic_write


def _summary(kind, src, dst, steps, extra=''):
    if steps:
        return 'upgraded %s %s -> %s (%s)%s' % (kind, src, dst, '; '.join(steps), extra)
    return '%s %s is already in the current format; wrote %s unchanged%s' % (kind, src, dst, extra)


@click.group('upgrade')
def upgrade():
    """Upgrade Caffe's older net, solver and weights formats to the current one."""


@upgrade.command('net')
@click.argument('src', metavar='IN', type=click.Path())
@click.argument('dst', metavar='OUT', type=click.Path())
def net_cmd(src, dst):
    """Upgrade a net prototxt (V0/V1 layers, input fields, old transform and
    BatchNorm params) and write it to OUT."""
    param = parse_text(read_text(src), caffe_pb2.NetParameter(), os.fspath(src))
    steps = apply_net_upgrades(param, os.fspath(src))
    write_text(dst, param)
    click.echo(_summary('net', src, dst, steps, ', %d layers' % len(param.layer)))


@upgrade.command('solver')
@click.argument('src', metavar='IN', type=click.Path())
@click.argument('dst', metavar='OUT', type=click.Path())
def solver_cmd(src, dst):
    """Upgrade a solver prototxt (solver_type enum to type string; inline nets) and write it to OUT."""
    param = parse_text(read_text(src), caffe_pb2.SolverParameter(), os.fspath(src))
    steps = apply_solver_upgrades(param, os.fspath(src))
    write_text(dst, param)
    click.echo(_summary('solver', src, dst, steps, ', type %s' % param.type))


@upgrade.command('weights')
@click.argument('src', metavar='IN', type=click.Path())
@click.argument('dst', metavar='OUT', type=click.Path())
def weights_cmd(src, dst):
    """Upgrade a binary .caffemodel (V0/V1 layers, blobs kept) and write it to OUT."""
    param = read_binary(src, caffe_pb2.NetParameter())
    steps = apply_net_upgrades(param, os.fspath(src))
    data = param.SerializeToString()
    with atomic_write(dst, 'wb') as f:
        f.write(data)
    n_blobs = sum(len(l.blobs) for l in param.layer)
    click.echo(_summary('weights', src, dst, steps, ', %d layers, %d blobs, %d bytes'
                        % (len(param.layer), n_blobs, len(data))))


COMMANDS = [upgrade]
