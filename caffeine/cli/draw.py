"""caffeine draw MODEL OUT.png: a picture of a net (pycaffe's draw_net.py)."""
import click
from ..draw import draw_net_to_file
from ..prototxt import read_net_param


@click.command('draw')
@click.argument('model', type=click.Path())
@click.argument('output', type=click.Path())
@click.option('--rankdir', type=click.Choice(['LR', 'TB', 'BT', 'RL'], case_sensitive=False), default='LR',
              show_default=True, help='Direction of the graph: left-right, top-bottom, ...')
@click.option('--phase', type=click.Choice(['TRAIN', 'TEST', 'ALL'], case_sensitive=False), default='ALL',
              show_default=True, help='Draw only the layers of this phase.')
@click.option('--display-lrm', is_flag=True, help='Show the learning rate multipliers of learning layers.')
def draw_cmd(model, output, rankdir, phase, display_lrm):
    """Draw the net MODEL (a prototxt) into OUTPUT; its extension picks the format (png, svg, pdf, dot).

    Needs pydot (pip install 'caffeine[draw]') and, except for .dot, Graphviz's dot program.
    """
    net = read_net_param(model)
    draw_net_to_file(net, output, rankdir.upper(), None if phase.upper() == 'ALL' else phase.upper(),
                     display_lrm=display_lrm)
    click.echo('Drew net %s to %s' % (net.name or model, output), err=True)


COMMANDS = [draw_cmd]
