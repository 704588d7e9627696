"""``caffeine data``: Caffe's data tools (convert_imageset, compute_image_mean, MNIST, CIFAR-10).

Each shows a progress bar on a terminal and ends with one summary line.
"""
from __future__ import annotations

import sys

import click
from ..data.tools import compute_mean, convert_cifar10, convert_imageset, convert_mnist, db_info


def _progress():
    return sys.stderr.isatty()


@click.group('data')
def data():
    """Build and inspect Caffe's databases (LMDB, LevelDB) of Datum records."""


@data.command('convert-imageset')
@click.argument('root')
@click.argument('listfile')
@click.argument('db')
@click.option('--resize-height', type=int, default=0, show_default=True, help='Resize images to this height (with --resize-width).')
@click.option('--resize-width', type=int, default=0, show_default=True, help='Resize images to this width (with --resize-height).')
@click.option('--gray', is_flag=True, help='Read images as grayscale (1 channel).')
@click.option('--shuffle', is_flag=True, help='Shuffle the order of the images.')
@click.option('--encoded', is_flag=True, help='Store the encoded image files in the Datums.')
@click.option('--encode-type', default='', help='Encode as this type (jpg, png); default: as the first file.')
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default='lmdb', show_default=True)
@click.option('--check-size', is_flag=True, help='Check that every image has the same size.')
@click.option('--skip-bad', is_flag=True, help="Skip images that cannot be read (as Caffe does) instead of stopping.")
@click.option('--overwrite', is_flag=True, help='Replace DB if it exists.')
@click.option('--limit', type=int, default=None, help='Convert only the first N images.')
def convert_imageset_cmd(root, listfile, db, resize_height, resize_width, gray, shuffle, encoded, encode_type,
                         db_backend, check_size, skip_bad, overwrite, limit):
    """Convert images to a database of Datums, as Caffe's convert_imageset.

    ROOT is the folder the LISTFILE's names are relative to; each LISTFILE line is
    `name label`.  Keys are `%08d_name`.
    """
    r = convert_imageset(root, listfile, db, resize_height, resize_width, gray, shuffle, encoded, encode_type,
                         db_backend, check_size, skip_bad, overwrite, progress=_progress(), limit=limit)
    extra = (', %d skipped' % r['skipped']) if r['skipped'] else ''
    click.echo('convert-imageset: wrote %d images to %s (%s)%s in %.1f s'
               % (r['count'], r['path'], r['backend'], extra, r['seconds']))


@data.command('compute-mean')
@click.argument('db')
@click.argument('out', required=False)
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default=None,
              help='Database kind (default: detected).')
def compute_mean_cmd(db, out, db_backend):
    """Mean image of DB, written to OUT (a .binaryproto), as Caffe's compute_image_mean."""
    r = compute_mean(db, out, db_backend, progress=_progress())
    means = ' '.join('%g' % m for m in r['channel_means'])
    c, h, w = r['mean'].shape
    click.echo('compute-mean: %d images of %dx%dx%d%s; mean_value per channel: %s'
               % (r['count'], c, h, w, (' -> %s' % r['path']) if r['path'] else '', means))


@data.command('mnist')
@click.option('--from', 'from_dir', default=None, help="Folder of the four MNIST IDX files (.gz or not); "
              "default: the repository's data/mnist.  Missing files are downloaded there.")
@click.option('--out', 'out_dir', default=None, help='Folder for the databases (default: the --from folder).')
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default='lmdb', show_default=True)
@click.option('--limit', type=int, default=None, help='Convert only the first N examples of each set.')
def mnist_cmd(from_dir, out_dir, db_backend, limit):
    """MNIST to mnist_train_<backend> and mnist_test_<backend>, as Caffe's convert_mnist_data."""
    rs = convert_mnist(from_dir, out_dir, db_backend, limit=limit, progress=_progress())
    click.echo('mnist: ' + ', '.join('%s %d -> %s' % (r['split'], r['count'], r['path']) for r in rs)
               + ' in %.1f s' % sum(r['seconds'] for r in rs))


@data.command('cifar10')
@click.option('--from', 'from_dir', default=None, help="Folder of the CIFAR-10 binary batches (or "
              "cifar-10-binary.tar.gz); default: the repository's data/cifar10.  Downloaded there when missing.")
@click.option('--out', 'out_dir', default=None, help='Folder for the databases (default: the --from folder).')
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default='lmdb', show_default=True)
def cifar10_cmd(from_dir, out_dir, db_backend):
    """CIFAR-10 to cifar10_train_<backend> and cifar10_test_<backend>, as Caffe's convert_cifar_data."""
    rs = convert_cifar10(from_dir, out_dir, db_backend, progress=_progress())
    click.echo('cifar10: ' + ', '.join('%s %d -> %s' % (r['split'], r['count'], r['path']) for r in rs)
               + ' in %.1f s' % sum(r['seconds'] for r in rs))


@data.command('info')
@click.argument('db')
@click.option('--backend', 'db_backend', type=click.Choice(['lmdb', 'leveldb']), default=None)
@click.option('-n', '--show', type=int, default=1, show_default=True, help='Records to describe.')
def info_cmd(db, db_backend, show):
    """Describe a database: backend, record count, the first records."""
    r = db_info(db, db_backend, show)
    for rec in r['records']:
        click.echo('  %s: label %d, %s' % (rec['key'], rec['label'], rec['datum']))
    click.echo('%s: %s, %d records' % (r['path'], r['backend'], r['count']))


COMMANDS = [data]
