"""Caffe's data tools: convert_imageset, compute_image_mean, convert_mnist_data, convert_cifar_data.

Each writes its database(s) under a temporary name and renames them into place
when complete, and writes records byte-for-byte as Caffe's tools do (same keys,
same serialized Datum), so the databases are interchangeable with Caffe's.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import struct
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .. import backend
from ..errors import DataError
from ..proto import caffe_pb2
from ..utils import atomic_write, log
from ..zoo import ZooError, fetch_url
from .datum import (Datum, datum_to_array, decode_datum_native, encode_image, encoded_datum_bytes,
                    image_extension, parse_datum, raw_datum_bytes, read_image)
from .db import DBWriter, backend_name, open_db
from .listfile import read_label_list

REPO_DATA = Path(__file__).resolve().parents[2] / 'data'


def _bar(progress, total, desc, unit='img'):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, disable=not progress, leave=False, dynamic_ncols=True)


def _default_dir(name):
    d = REPO_DATA / name
    return d if d.is_dir() else Path('data') / name


# -- convert_imageset ---------------------------------------------------------------------
def read_list_file(path):
    """convert_imageset's list file: ``name label`` per line, split at the last space."""
    return read_label_list(path)


def _match_ext(name, enc):
    ext = image_extension(name)
    enc = enc.lower()
    return ext == enc or (enc == 'jpg' and ext == 'jpeg')


def convert_imageset(root, listfile, db, resize_height=0, resize_width=0, gray=False, shuffle=False,
                     encoded=False, encode_type='', backend_='lmdb', check_size=False, skip_bad=False,
                     overwrite=False, progress=False, threads=None, limit=None):
    """Caffe's convert_imageset.  Returns {'count', 'skipped', 'path', 'backend', 'seconds'}.

    Keys are ``%08d_<name>`` (the line's index after shuffling); raw records hold
    BGR channels-first pixels (``encoded: false`` set, as Caffe's CVMatToDatum);
    encoded ones hold the file itself when it needs no change (extension matches, no
    resize), else the image re-encoded as ``encode_type``.
    """
    t0 = time.time()
    lines = read_list_file(listfile)
    if shuffle:
        order = backend.rng().permutation(len(lines))
        lines = [lines[i] for i in order]
    if limit is not None:
        lines = lines[:int(limit)]
    is_color = not gray
    enc = (encode_type or '').lower().lstrip('.')
    if encoded and not enc and lines:
        enc = image_extension(lines[0][0])
        if not enc:
            log.warning("Failed to guess the encoding of '%s'", lines[0][0])
    resize = resize_height > 0 and resize_width > 0

    def load(i):
        name, label, no = lines[i]
        path = os.path.join(root, name) if root else name
        where = '%s:%d: ' % (listfile, no)
        try:
            if enc and not resize and _match_ext(name, enc):
                img = read_image(path, 0, 0, is_color, where)     # checks it decodes
                with open(path, 'rb') as f:
                    return img.shape, encoded_datum_bytes(f.read(), label)
            img = read_image(path, resize_height, resize_width, is_color, where)
            if enc:
                return img.shape, encoded_datum_bytes(encode_image(img, enc), label)
            return img.shape, raw_datum_bytes(img, label)
        except DataError as e:
            if skip_bad:
                log.warning('%s', e)
                return None, None
            raise

    n = len(lines)
    nthreads = threads or max(1, min(8, os.cpu_count() or 1))
    skipped = 0
    first_shape = None
    writer = DBWriter(db, backend_, overwrite=overwrite)
    ok = False
    try:
        with ThreadPoolExecutor(nthreads) as pool, _bar(progress, n, 'convert-imageset') as bar:
            chunk = 256
            for start in range(0, n, chunk):
                results = list(pool.map(load, range(start, min(n, start + chunk))))
                for j, (shape, value) in enumerate(results):
                    i = start + j
                    if value is None:
                        skipped += 1
                        continue
                    if check_size:
                        if first_shape is None:
                            first_shape = shape
                        elif shape != first_shape:
                            raise DataError('%s:%d: image %s is %s (channels x height x width), the first %s '
                                            '(--check-size)' % (listfile, lines[i][2], lines[i][0],
                                                                'x'.join(map(str, shape)), 'x'.join(map(str, first_shape))))
                    writer.put(b'%08d_' % i + lines[i][0].encode('utf-8', 'surrogateescape'), value)
                    if writer.count % 1000 == 0:
                        log.debug('Processed %d files.', writer.count)
                bar.update(len(results))
        ok = True
    finally:
        writer.close(ok)
    return {'count': writer.count, 'skipped': skipped, 'path': os.fspath(db),
            'backend': backend_name(backend_), 'seconds': time.time() - t0}


# -- compute_image_mean -----------------------------------------------------------------------
def compute_mean(db, out=None, backend_=None, progress=False):
    """Caffe's compute_image_mean: the mean image of a database (a float32 (C, H, W) array)
    and the per-channel means; writes a BlobProto to ``out`` (num 1, channels, height, width).

    Sums are float32 and record-ordered, as Caffe's, so the file is the same as Caffe's.
    """
    t0 = time.time()
    d = open_db(db, backend_)
    try:
        n_total = len(d) if d.backend == 'lmdb' else None
        cur = d.cursor()
        if not cur.valid():
            raise DataError('%s: the database is empty' % db)
        total = None
        shape = None
        count = 0
        with _bar(progress, n_total, 'compute-mean') as bar:
            while cur.valid():
                key = cur.key()
                datum = parse_datum(cur.value(), '%s: ' % db, key)
                decode_datum_native(datum)
                arr = datum_to_array(datum, 'native', '%s: ' % db, key)
                if total is None:
                    shape = arr.shape
                    total = np.zeros(arr.size, np.float32)
                elif arr.size != total.size:
                    raise DataError('%s: key %r: Datum has %d values, the first %d (%s)'
                                    % (db, key.decode('utf-8', 'backslashreplace'), arr.size, total.size,
                                       'x'.join(map(str, shape))))
                np.add(total, arr.reshape(-1), out=total, casting='unsafe')
                count += 1
                bar.update(1)
                cur.next()
    finally:
        d.close()
    mean = (total / np.float32(count)).astype(np.float32)
    c, h, w = shape
    bp = caffe_pb2.BlobProto()
    bp.num, bp.channels, bp.height, bp.width = 1, c, h, w
    bp.data.extend(mean.tolist())
    if out is not None:
        with atomic_write(out) as f:
            f.write(bp.SerializeToString())
    m = mean.reshape(c, h * w)
    per_channel = []
    for ci in range(c):
        # Caffe sums each channel in float, in order
        s = np.add.accumulate(m[ci], dtype=np.float32)[-1] if h * w else np.float32(0)
        per_channel.append(float(s / np.float32(h * w)))
    return {'mean': mean.reshape(c, h, w), 'channel_means': per_channel, 'count': count,
            'seconds': time.time() - t0, 'path': None if out is None else os.fspath(out)}


# -- downloads -------------------------------------------------------------------------------
def _download(urls, dest, what):
    """Fetch the first URL of ``urls`` that answers into ``dest`` (atomically, through
    ``dest.part``), with the zoo's retries and time limits; one-line error if none does."""
    errors = []
    for url in urls:
        log.info('Downloading %s', url)
        try:
            part = fetch_url(url, dest, os.path.basename(os.fspath(dest)),
                             hint='copy the file to %s' % os.fspath(dest))
            os.replace(part, dest)
            return dest
        except ZooError as e:
            errors.append(str(e))
    raise DataError('%s is missing and could not be downloaded (%s)' % (what, '; '.join(errors) or 'no URL'))


# -- MNIST ----------------------------------------------------------------------------------
MNIST_FILES = {
    # name: (md5 of the uncompressed file, magic)
    'train-images-idx3-ubyte': ('6bbc9ace898e44ae57da46a324031adb', 2051),
    'train-labels-idx1-ubyte': ('a25bea736e30d166cdddb491f175f624', 2049),
    't10k-images-idx3-ubyte': ('2646ac647ad5339dbf082846283269ea', 2051),
    't10k-labels-idx1-ubyte': ('27ae3e4e09519cfbb04c329615203637', 2049),
}
MNIST_URLS = [
    'http://yann.lecun.com/exdb/mnist/',
    'https://ossci-datasets.s3.amazonaws.com/mnist/',
]


def _mnist_bytes(folder, name, download=True):
    """The uncompressed bytes of MNIST file ``name`` from ``folder`` (``name`` or ``name.gz``),
    downloaded there first when missing; MD5-checked."""
    folder = Path(folder)
    raw, gz = folder / name, folder / (name + '.gz')
    if raw.is_file():
        data = raw.read_bytes()
        src = raw
    else:
        if not gz.is_file():
            if not download:
                raise DataError('MNIST file %s (or %s.gz) not found in %s' % (name, name, folder))
            _download([u + name + '.gz' for u in MNIST_URLS], gz, 'MNIST file %s in %s' % (name + '.gz', folder))
        try:
            data = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as e:
            raise DataError('%s: not a gzip file (%s)' % (gz, e))
        src = gz
    md5 = hashlib.md5(data).hexdigest()
    if md5 != MNIST_FILES[name][0]:
        raise DataError('%s: MD5 of the uncompressed file is %s, expected %s (a damaged or different file)'
                        % (src, md5, MNIST_FILES[name][0]))
    return data


def _idx(data, magic, path):
    if len(data) < 8:
        raise DataError('%s: too short for an IDX file' % path)
    m, n = struct.unpack('>II', data[:8])
    if m != magic:
        raise DataError('%s: incorrect magic %d (expected %d)' % (path, m, magic))
    if magic == 2051:
        rows, cols = struct.unpack('>II', data[8:16])
        body = np.frombuffer(data, np.uint8, offset=16)
        if body.size != n * rows * cols:
            raise DataError('%s: %d bytes of pixels for %d images of %dx%d' % (path, body.size, n, rows, cols))
        return body.reshape(n, rows, cols)
    body = np.frombuffer(data, np.uint8, offset=8)
    if body.size != n:
        raise DataError('%s: %d labels but the header says %d' % (path, body.size, n))
    return body


def convert_mnist(from_dir=None, out_dir=None, backend_='lmdb', limit=None, progress=False, download=True):
    """Caffe's convert_mnist_data, for both sets: ``mnist_train_<backend>`` (60000) and
    ``mnist_test_<backend>`` (10000) in ``out_dir``.  Datum: channels 1, height 28, width 28,
    uint8 data, label; keys ``%08d``.  ``limit`` converts only the first examples of each set."""
    be = backend_name(backend_)
    from_dir = Path(from_dir) if from_dir else _default_dir('mnist')
    out_dir = Path(out_dir) if out_dir else from_dir
    results = []
    for split, prefix in (('train', 'train'), ('test', 't10k')):
        t0 = time.time()
        images = _idx(_mnist_bytes(from_dir, prefix + '-images-idx3-ubyte', download), 2051,
                      from_dir / (prefix + '-images-idx3-ubyte'))
        labels = _idx(_mnist_bytes(from_dir, prefix + '-labels-idx1-ubyte', download), 2049,
                      from_dir / (prefix + '-labels-idx1-ubyte'))
        if len(images) != len(labels):
            raise DataError('%s: %d images but %d labels' % (from_dir / prefix, len(images), len(labels)))
        n = len(images) if limit is None else min(len(images), int(limit))
        rows, cols = images.shape[1:]
        out = out_dir / ('mnist_%s_%s' % (split, be))
        datum = Datum()
        datum.channels, datum.height, datum.width = 1, rows, cols
        with DBWriter(out, be, overwrite=True) as w, _bar(progress, n, 'mnist %s' % split) as bar:
            for i in range(n):
                datum.data = images[i].tobytes()
                datum.label = int(labels[i])
                w.put(b'%08d' % i, datum.SerializeToString())
                if (i + 1) % 1000 == 0:
                    bar.update(1000)
            bar.update(n % 1000)
        results.append({'split': split, 'path': os.fspath(out), 'count': n, 'seconds': time.time() - t0})
    return results


# -- CIFAR-10 -------------------------------------------------------------------------------
CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz'
CIFAR10_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530'
CIFAR10_TRAIN = ['data_batch_%d.bin' % i for i in range(1, 6)]
CIFAR10_TEST = ['test_batch.bin']
_CIFAR_REC = 1 + 3 * 32 * 32


def _cifar_reader(folder, download=True):
    """A function name -> bytes over the CIFAR-10 binary batches in ``folder`` (the .bin files,
    a ``cifar-10-batches-bin`` sub-folder, or ``cifar-10-binary.tar.gz``)."""
    folder = Path(folder)
    for d in (folder, folder / 'cifar-10-batches-bin'):
        if all((d / n).is_file() for n in CIFAR10_TRAIN + CIFAR10_TEST):
            return lambda name, d=d: (d / name).read_bytes(), d
    tgz = folder / 'cifar-10-binary.tar.gz'
    if not tgz.is_file():
        missing = [n for n in CIFAR10_TRAIN + CIFAR10_TEST if not (folder / n).is_file()]
        if not download:
            raise DataError('CIFAR-10 batches not found in %s (missing %s)' % (folder, ', '.join(missing)))
        _download([CIFAR10_URL], tgz, 'CIFAR-10 (%s, or cifar-10-binary.tar.gz) in %s' % (missing[0], folder))
        h = hashlib.md5()
        with open(tgz, 'rb') as f:
            for b in iter(lambda: f.read(1 << 20), b''):
                h.update(b)
        if h.hexdigest() != CIFAR10_MD5:
            os.unlink(tgz)
            raise DataError('%s: MD5 %s, expected %s (download damaged)' % (tgz, h.hexdigest(), CIFAR10_MD5))
    try:
        tar = tarfile.open(tgz, 'r:gz')
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError('%s: cannot read the archive (%s)' % (tgz, e))

    def read(name):
        m = members.get(name)
        if m is None:
            raise DataError('%s: no %s in the archive' % (tgz, name))
        return tar.extractfile(m).read()
    return read, tgz


def convert_cifar10(from_dir=None, out_dir=None, backend_='lmdb', progress=False, download=True, limit=None):
    """Caffe's convert_cifar_data: ``cifar10_train_<backend>`` (data_batch_1..5) and
    ``cifar10_test_<backend>`` (test_batch) in ``out_dir``.  Datum: channels 3, 32x32, the
    file's bytes as they are (R, G, B planes), label; keys ``%05d``."""
    be = backend_name(backend_)
    from_dir = Path(from_dir) if from_dir else _default_dir('cifar10')
    out_dir = Path(out_dir) if out_dir else from_dir
    read, where = _cifar_reader(from_dir, download)
    results = []
    for split, names in (('train', CIFAR10_TRAIN), ('test', CIFAR10_TEST)):
        t0 = time.time()
        out = out_dir / ('cifar10_%s_%s' % (split, be))
        datum = Datum()
        datum.channels, datum.height, datum.width = 3, 32, 32
        count = 0
        with DBWriter(out, be, overwrite=True) as w, _bar(progress, 50000 if split == 'train' else 10000,
                                                          'cifar10 %s' % split) as bar:
            for name in names:
                data = read(name)
                if len(data) % _CIFAR_REC:
                    raise DataError('%s: %d bytes, not a whole number of %d-byte CIFAR-10 records'
                                    % (Path(os.fspath(where)) / name, len(data), _CIFAR_REC))
                recs = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_REC)
                for r in recs:
                    if limit is not None and count >= limit:
                        break
                    datum.label = int(r[0].view(np.int8))
                    datum.data = r[1:].tobytes()
                    w.put(b'%05d' % count, datum.SerializeToString())
                    count += 1
                bar.update(len(recs))
        results.append({'split': split, 'path': os.fspath(out), 'count': count, 'seconds': time.time() - t0})
    return results


# -- inspection --------------------------------------------------------------------------------
def db_info(path, backend_=None, show=0):
    """{'backend', 'count', 'first_key', 'datum': description of the first record, 'records': [...]}"""
    d = open_db(path, backend_)
    try:
        info = {'path': os.fspath(path), 'backend': d.backend, 'count': len(d)}
        recs = []
        for i, (k, v) in enumerate(d.items(limit=max(1, show))):
            datum = parse_datum(v, '%s: ' % path, k)
            if datum.encoded:
                arr = datum_to_array(datum, 'native', '%s: ' % path, k)
                desc = 'encoded %s, %s' % (_sniff(datum.data), 'x'.join(map(str, arr.shape)))
            elif datum.data:
                desc = 'uint8 %dx%dx%d' % (datum.channels, datum.height, datum.width)
            else:
                desc = 'float %dx%dx%d' % (datum.channels, datum.height, datum.width)
            recs.append({'key': k.decode('utf-8', 'backslashreplace'), 'label': datum.label, 'datum': desc})
        info['records'] = recs
        info['first_key'] = recs[0]['key'] if recs else None
        return info
    finally:
        d.close()


def _sniff(b):
    if b[:3] == b'\xff\xd8\xff':
        return 'JPEG'
    if b[:8] == b'\x89PNG\r\n\x1a\n':
        return 'PNG'
    if b[:2] == b'BM':
        return 'BMP'
    return 'image'
