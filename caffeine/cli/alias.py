"""``caffeine alias install|uninstall|status``: ``import caffe`` resolving to caffeine (see caffeine.alias)."""
from __future__ import annotations

import os
import site
import sysconfig

import click

from .. import alias as _alias
from ..errors import CaffeineError


def _site_dir(user, target):
    if target:
        return target
    if user:
        return site.getusersitepackages()
    return sysconfig.get_paths()['purelib']


def _where(user, target):
    return os.path.join(_site_dir(user, target), _alias.PTH_NAME)


_WHERE = [click.option('--user', is_flag=True, help="The user's site-packages instead of this Python's."),
          click.option('--target', default='', type=click.Path(file_okay=False),
                       help='A site directory of your own (one that Python reads .pth files from).')]


def _options(f):
    for opt in reversed(_WHERE):
        f = opt(f)
    return f


@click.group('alias')
def alias():
    """`import caffe` in scripts you cannot edit: caffe and caffe.X resolve to caffeine, unless a
    real pycaffe is on the path (it is never shadowed)."""


@alias.command('install')
@_options
def install_cmd(user, target):
    """Write the .pth file that enables the alias when Python starts."""
    path = _where(user, target)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(_alias.pth_line())
    except OSError as e:
        raise CaffeineError('%s: cannot write the alias file: %s' % (path, e.strerror or e))
    click.echo('caffeine: wrote %s; `import caffe` now resolves to caffeine in new Python processes '
               '(`caffeine alias uninstall` removes it)' % path, err=True)
    real = _alias.real_caffe_on_path()
    if real:
        click.echo('caffeine: note: a real caffe is on the path (%s); it keeps precedence' % real, err=True)


@alias.command('uninstall')
@_options
def uninstall_cmd(user, target):
    """Remove the .pth file written by `caffeine alias install`."""
    path = _where(user, target)
    try:
        os.remove(path)
    except FileNotFoundError:
        raise CaffeineError('%s: no alias file to remove (was it installed with other --user/--target?)' % path)
    except OSError as e:
        raise CaffeineError('%s: cannot remove the alias file: %s' % (path, e.strerror or e))
    click.echo('caffeine: removed %s' % path, err=True)


@alias.command('status')
@_options
def status_cmd(user, target):
    """Say whether the alias file is installed and which caffe a new process would import."""
    path = _where(user, target)
    click.echo('alias file: %s (%s)' % (path, 'installed' if os.path.exists(path) else 'not installed'))
    real = _alias.real_caffe_on_path()
    click.echo('real caffe on the path: %s' % (real or 'none'))


COMMANDS = [alias]
