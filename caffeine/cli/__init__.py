"""The ``caffeine`` command line: a thin click shell over the library.

Each subcommand lives in its own module of this package and is registered
below.  The log goes to standard error in glog's format (Caffe's, so that its
log parsers read it).  Errors print one line, ``caffeine: error: ...``, and exit
with status 1; ``--debug`` (or CAFFEINE_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import importlib
import os
import sys

import click

from ..errors import CaffeineError
from ..glog import log_to_stderr

# module name -> attribute holding a click command (or a list of them)
_COMMAND_MODULES = ('upgrade', 'train', 'data', 'zoo', 'summary', 'draw', 'device', 'alias', 'export')


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.option('--debug', is_flag=True, help='Show full tracebacks on errors.')
@click.option('--no-python-layers', is_flag=True,
              help='Refuse "Python" layers (they import code named in a prototxt).')
@click.version_option(package_name='caffeine', prog_name='caffeine')
def main(debug, no_python_layers):
    """caffeine: Caffe's prototxt nets, solvers and weights, in Python."""
    if debug:
        os.environ['CAFFEINE_DEBUG'] = '1'
    if no_python_layers:
        os.environ['CAFFEINE_NO_PYTHON_LAYERS'] = '1'
    log_to_stderr()


for _m in _COMMAND_MODULES:
    for _c in importlib.import_module('.' + _m, __name__).COMMANDS:
        main.add_command(_c)


def _debug():
    return os.environ.get('CAFFEINE_DEBUG') == '1' or '--debug' in sys.argv[1:]


def run(argv=None):
    """Console-script entry point: one-line errors, exit status 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Caffe's single-dash spellings (-solver, -gpu, ...) become --solver, --gpu
    argv = [('-' + a) if (a.startswith('-') and not a.startswith('--') and len(a.split('=')[0]) > 2
                          and a[1].isalpha()) else a
            for a in argv]
    try:
        main.main(args=argv, prog_name='caffeine', standalone_mode=False)
    except click.exceptions.Abort:
        click.echo('caffeine: aborted', err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code if e.exit_code else 2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (CaffeineError, OSError, MemoryError) as e:
        if _debug():
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        click.echo('caffeine: error: %s' % msg, err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        if _debug():
            raise
        click.echo('caffeine: interrupted', err=True)
        sys.exit(130)
    sys.exit(0)
