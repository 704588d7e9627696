"""caffeine summary MODEL / caffeine plot LOG -o curves.png"""
import click
from ..summary import format_summary, plot_log


@click.command('summary')
@click.argument('model', type=click.Path())
@click.option('--phase', type=click.Choice(['TRAIN', 'TEST']), default='TEST', show_default=True)
@click.option('--level', type=int, default=0)
@click.option('--stage', multiple=True)
def summary_cmd(model, phase, level, stage):
    """Table of layers: top shapes, parameter counts, multiply-adds, totals and memory."""
    import caffeine
    net = caffeine.Net(model, caffeine.TRAIN if phase == 'TRAIN' else caffeine.TEST, level=level, stages=list(stage),
                       memory_plan=(phase == 'TEST'))
    click.echo(format_summary(net))


@click.command('plot')
@click.argument('log', type=click.Path())
@click.option('-o', '--output', default='curves.png', show_default=True, help='Image to write (png, svg, pdf).')
def plot_cmd(log, output):
    """Draw training loss, test loss and test accuracy from a caffeine or Caffe log."""
    parsed = plot_log(log, output)
    click.echo('wrote %s (%d train points, %d test series)' % (output, len(parsed['train']), len(parsed['test'])))


COMMANDS = [summary_cmd, plot_cmd]
