"""The text list files Caffe's data layers and tools read, read in one place.

ImageData's and convert_imageset's ``path label`` lists, HDF5Data's list of
HDF5 files, WindowData's window file: each is text.  A binary file given
where a list is expected (an ``.h5`` as HDF5Data's ``source``, an image, a
database) is refused here with one line naming it, instead of a decoding
error further on.
"""
from __future__ import annotations

from ..errors import DataError

#: signatures of binary files people give where a list is expected
_SIGNATURES = (
    (b'\x89HDF\r\n\x1a\n', 'an HDF5 file'),
    (b'\x89PNG\r\n\x1a\n', 'a PNG image'),
    (b'\xff\xd8\xff', 'a JPEG image'),
    (b'GIF8', 'a GIF image'),
    (b'\x1f\x8b', 'a gzip file'),
    (b'PK\x03\x04', 'a zip file'),
)
_SNIFF = 1 << 16


def _binary_kind(head):
    """What the first bytes of a file say it is, if binary; None for text."""
    for sig, what in _SIGNATURES:
        if head.startswith(sig):
            return what
    if len(head) >= 24 and head[16:20] == b'\xde\xc0\xef\xbe':
        return 'an LMDB database file'
    if b'\x00' in head:
        return 'binary data'
    return None


def read_text_lines(path, kind='list file', where='', expected=''):
    """The lines of text file ``path`` as [(line_number, line)], line endings removed.

    ``kind`` names the file in messages ('list file', 'HDF5 list file', 'window file'),
    ``where`` prefixes them (a layer's name), ``expected`` says what the file should hold.
    An unreadable or binary file raises a one-line DataError naming it.  Bytes that are
    not UTF-8 are kept (surrogate escapes), as Caffe reads names byte for byte.
    """
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise DataError('%scannot read %s %s (%s)' % (where, kind, path, e.strerror or e))
    what = _binary_kind(data[:_SNIFF])
    if what is not None:
        raise DataError('%s%s %s is %s, not text%s'
                        % (where, kind, path, what, (': it should hold %s' % expected) if expected else ''))
    text = data.decode('utf-8', 'surrogateescape')
    return list(enumerate(text.splitlines(), 1))


def read_label_list(path, where='', kind='list file'):
    """Caffe's ``path label`` lines, split at the last space (or tab):
    [(path, label, line_number)], blank lines skipped."""
    entries = []
    for no, line in read_text_lines(path, kind, where, "one 'path label' per line"):
        line = line.rstrip()
        if not line.strip():
            continue
        pos = line.rfind(' ')
        if pos < 0:
            pos = line.rfind('\t')
        if pos < 0:
            raise DataError("%s%s:%d: expected 'path label', got %r" % (where, path, no, line[:80]))
        name, lab = line[:pos].strip(), line[pos + 1:].strip()
        try:
            label = int(lab)
        except ValueError:
            raise DataError('%s%s:%d: label %r is not an integer' % (where, path, no, lab[:40]))
        entries.append((name, label, no))
    return entries
