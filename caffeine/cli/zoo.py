"""``caffeine zoo``: list, describe and download pretrained models."""
from __future__ import annotations

import click

from .. import zoo as _zoo


def _human(n):
    if n is None:
        return '?'
    size = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if size < 1024 or unit == 'GiB':
            return ('%d %s' % (size, unit)) if unit == 'B' else ('%.1f %s' % (size, unit))
        size /= 1024.0
    return '?'  # pragma: no cover


@click.group('zoo')
def zoo():
    """Caffe's model zoo: pretrained nets and their weights."""


@zoo.command('list')
def list_cmd():
    """List the zoo models: name, size, licence, whether downloaded."""
    rows = [(e.key, _human(e.size), e.license, 'yes' if _zoo.is_downloaded(e) else 'no')
            for e in _zoo.catalogue()]
    if not rows:
        click.echo('no zoo models found in %s'
                   % ', '.join(str(d) for d in _zoo.models_dirs()), err=True)
        return
    header = ('NAME', 'SIZE', 'LICENSE', 'DOWNLOADED')
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = '  '.join('%%-%ds' % w for w in widths[:-1]) + '  %s'
    click.echo(fmt % header)
    for r in rows:
        click.echo(fmt % r)


@zoo.command('info')
@click.argument('name')
def info_cmd(name):
    """Describe one model (a catalogue name or a folder with a readme.md)."""
    e = _zoo.info(name)
    path = _zoo.weights_path(e)
    fields = [
        ('model', e.key),
        ('name', e.name),
        ('folder', str(e.folder)),
        ('caffemodel', e.caffemodel),
        ('url', e.url),
        ('sha1', e.sha1 or '(none published: downloads cannot be verified)'),
        ('size', '?' if e.size is None else '%s (%d bytes)' % (_human(e.size), e.size)),
        ('license', e.license),
    ]
    if e.gist_id:
        fields.append(('gist_id', e.gist_id))
    for k in ('caffe_commit',):
        if e.meta.get(k):
            fields.append((k, e.meta[k]))
    fields.append(('deploy', str(e.deploy) if e.deploy.is_file() else '(none)'))
    fields.append(('weights', '%s (%s)' % (path, 'downloaded' if path.is_file() else 'not downloaded')))
    w = max(len(k) for k, _ in fields)
    for k, v in fields:
        click.echo('%s  %s' % (k.ljust(w), v))
    if e.body.strip():
        click.echo('')
        click.echo(e.body.rstrip('\n'))


@zoo.command('download')
@click.argument('name')
@click.option('--dir', 'dir_', type=click.Path(file_okay=False), default=None,
              help='Put the weights in this folder (default: the cache, or the model folder when NAME is a folder).')
@click.option('--mirror', default=None, metavar='URL',
              help='Fetch URL/<caffemodel file name> instead of the published URL (or set CAFFEINE_ZOO_MIRROR).')
@click.option('--force', is_flag=True, help='Download again even if a verified file is there.')
@click.option('--no-progress', is_flag=True, help='No progress bar.')
@click.option('--timeout', type=float, default=None, metavar='SECONDS',
              help='How long one connect or read may wait (default %g, or $%s).' % (_zoo.TIMEOUT, _zoo.ENV_TIMEOUT))
@click.option('--max-wait', type=float, default=None, metavar='SECONDS',
              help='Give up after this long without data, retries included (default %g, or $%s).'
              % (_zoo.MAX_WAIT, _zoo.ENV_MAX_WAIT))
def download_cmd(name, dir_, mirror, force, no_progress, timeout, max_wait):
    """Download a model's weights (resumable, sha1-verified); print the path."""
    path = _zoo.download(name, dir=dir_, mirror=mirror, progress=not no_progress, force=force,
                         timeout=timeout, max_wait=max_wait)
    click.echo(str(path))


COMMANDS = [zoo]
