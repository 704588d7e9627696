"""caffeine summary MODEL / caffeine plot LOG -o curves.png"""
import click
from ..summary import format_summary, plot_logs


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
@click.argument('logs', nargs=-1, required=True, type=click.Path())
@click.option('-o', '--output', default='curves.png', show_default=True, help='Image to write (png, svg, pdf).')
@click.option('--logy', is_flag=True, help='Logarithmic loss axis.')
def plot_cmd(logs, output, logy):
    """Draw training loss, test loss and test accuracy from caffeine or Caffe logs.

    Several LOGS are drawn over each other, one colour per run, to compare them.
    """
    parsed = plot_logs(logs, output, logy=logy)
    for log, p in zip(logs, parsed):
        click.echo('wrote %s: %s (%d train points, %d test series)' % (output, log, len(p['train']), len(p['test'])))


COMMANDS = [summary_cmd, plot_cmd]
