"""Key-value databases as Caffe's ``caffe::db``: LMDB (via ``lmdb``) and LevelDB (via ``plyvel``).

One cursor API for both, as Caffe's ``db::Cursor``::

    db = open_db('train_lmdb')            # backend guessed from the folder, or backend='lmdb'
    cur = db.cursor()                     # at the first record
    while cur.valid():
        key, value = cur.key(), cur.value()
        cur.next()
    cur.seek_to_first()
    db.close()

and a writer that never leaves a half-written database under its final name::

    with DBWriter('out_lmdb', 'lmdb') as w:    # writes '.out_lmdb.tmpPID', renamed on success
        w.put(b'00000000', datum_bytes)

Keys and values are bytes, stored exactly as given (Caffe's keys: ``%08d`` and
friends; values: serialized ``Datum``).  LevelDB needs the optional ``plyvel``
package (``pip install caffeine[leveldb]``).

Handles are shared inside one process: a train and a test net reading the
same database share one LMDB environment / LevelDB handle (LMDB forbids
opening one environment twice in a process; LevelDB forbids it outright).
"""
from __future__ import annotations

import os
import struct
import threading

from ..errors import DataError
from ..utils import atomic_path, remove_stale_temps

BACKENDS = ('lmdb', 'leveldb')
LMDB_INITIAL_MAP_SIZE = 64 << 20


def backend_name(backend):
    """'lmdb' or 'leveldb' from a name or a ``DataParameter.DB`` value (LEVELDB=0, LMDB=1)."""
    if isinstance(backend, str):
        b = backend.strip().lower()
        if b in BACKENDS:
            return b
        raise DataError('unknown database backend %r (known: lmdb, leveldb)' % backend)
    if backend == 1:
        return 'lmdb'
    if backend == 0:
        return 'leveldb'
    raise DataError('unknown database backend %r (known: LMDB=1, LEVELDB=0)' % (backend,))


def detect_backend(path):
    """'lmdb' or 'leveldb' from what is on disk at ``path``, or None."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, 'data.mdb')):
            return 'lmdb'
        if os.path.exists(os.path.join(path, 'CURRENT')):
            return 'leveldb'
        return None
    if os.path.isfile(path):
        # an LMDB opened with subdir=False is a single file: known by its header
        try:
            check_lmdb_file(path)
        except DataError:
            return None
        return 'lmdb'
    return None


def _plyvel(what=''):
    try:
        import plyvel
    except ImportError:
        raise DataError('%sthe LEVELDB backend needs plyvel: pip install caffeine[leveldb] '
                        '(or use backend: LMDB)' % what)
    return plyvel


def _first_line(e):
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def db_error_text(e):
    """A database library's error as one line of text: plyvel's arguments are bytes
    (``b'IO error: ...'``); LMDB's and the OS's are text."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    args = getattr(e, 'args', ())
    if len(args) == 1 and isinstance(args[0], bytes):
        text = args[0].decode('utf-8', 'backslashreplace').strip()
        return text.splitlines()[0] if text else type(e).__name__
    return _first_line(e)


def read_error(backend, path, e):
    """The DataError for a failure while reading database ``path``."""
    return DataError('cannot read %s database %s: %s' % (backend.upper(), path, db_error_text(e)))


# -- shared read handles -----------------------------------------------------------------
_shared = {}
_shared_lock = threading.Lock()


class _Handle:
    __slots__ = ('backend', 'path', 'obj', 'refs', 'lock')

    def __init__(self, backend, path, obj):
        self.backend = backend
        self.path = path
        self.obj = obj
        self.refs = 0
        self.lock = threading.Lock()


LMDB_MAGIC = 0xBEEFC0DE


def lmdb_data_file(path):
    """The file holding an LMDB's pages: ``path/data.mdb``, or ``path`` itself (subdir=False)."""
    return os.path.join(path, 'data.mdb') if os.path.isdir(path) else path


def check_lmdb_file(path):
    """Refuse an LMDB whose data file is not one (wrong magic), or is shorter than its own
    metadata says it must be (a copy or download cut short), before anything maps it.

    Reading such a file would train on the part that survived and then die of SIGBUS when
    a read maps past its end.  Every reader opens LMDB through here.
    """
    data = lmdb_data_file(path)
    try:
        size = os.path.getsize(data)
        with open(data, 'rb') as f:
            head = f.read(44)
    except OSError as e:
        raise DataError('cannot open LMDB database %s: %s' % (path, e.strerror or e))
    if size == 0:
        raise DataError('LMDB database %s is damaged: %s is empty (0 bytes)' % (path, data))
    # page 0: a 16-byte page header, then MDB_meta: mm_magic, mm_version, mm_address,
    # mm_mapsize, then the free-page DB whose first field holds the page size
    if len(head) < 20 and os.path.isdir(path):
        raise DataError('LMDB database %s is damaged: %s is %d bytes, shorter than its two metadata pages '
                        '(the file was cut short: copy or build it again)' % (path, data, size))
    if len(head) < 20 or struct.unpack_from('<I', head, 16)[0] != LMDB_MAGIC:
        raise DataError('%s is not an LMDB database (%s does not start with an LMDB header)' % (path, data))
    psize = struct.unpack_from('<I', head, 40)[0] if len(head) >= 44 else 0
    if len(head) < 44 or size < 2 * psize:
        raise DataError('LMDB database %s is damaged: %s is %d bytes, shorter than its two metadata pages '
                        '(the file was cut short: copy or build it again)' % (path, data, size))
    return data, size


def check_lmdb_size(env, path, data, size):
    """The data file must hold every page the metadata counts: (last_pgno + 1) * page size."""
    need = (int(env.info()['last_pgno']) + 1) * int(env.stat()['psize'])
    if size < need:
        raise DataError('LMDB database %s is damaged: %s is %d bytes but its metadata needs %d '
                        '(the file was cut short: copy or build it again)' % (path, data, size, need))


def _open_lmdb_reader(path):
    import lmdb
    subdir = os.path.isdir(path)
    data, size = check_lmdb_file(path)
    kw = dict(readonly=True, subdir=subdir, max_readers=512, readahead=True, meminit=False)
    lock_file = os.path.join(path, 'lock.mdb') if subdir else path + '-lock'
    had_lock = os.path.exists(lock_file)
    env = None
    try:
        try:
            env = lmdb.open(path, lock=True, **kw)
        except lmdb.Error as e:
            # Caffe's ALLOW_LMDB_NOLOCK: a read-only folder cannot hold the lock file
            if 'ermission' in str(e) or 'Read-only' in str(e) or 'EACCES' in str(e):
                try:
                    env = lmdb.open(path, lock=False, **kw)
                except lmdb.Error as e2:
                    e = e2
            if env is None:
                raise DataError('cannot open LMDB database %s: %s' % (path, _first_line(e)))
        check_lmdb_size(env, path, data, size)
        return env
    except BaseException:
        if env is not None:
            env.close()
        if not had_lock and not subdir:
            # opening a single-file LMDB creates '<file>-lock' beside it: leave nothing behind
            try:
                os.unlink(lock_file)
            except OSError:
                pass
        raise


def _open_leveldb_reader(path, what):
    plyvel = _plyvel(what)
    try:
        return plyvel.DB(path, create_if_missing=False)
    except Exception as e:  # plyvel.Error, IOError (locked by another process)
        raise DataError('cannot open LEVELDB database %s: %s' % (path, db_error_text(e)))


def _acquire(path, backend, what=''):
    real = os.path.realpath(path)
    with _shared_lock:
        h = _shared.get((backend, real))
        if h is None:
            if backend == 'lmdb':
                obj = _open_lmdb_reader(path)
            else:
                obj = _open_leveldb_reader(path, what)
            h = _Handle(backend, real, obj)
            _shared[(backend, real)] = h
        h.refs += 1
        return h


def _release(h):
    with _shared_lock:
        h.refs -= 1
        if h.refs > 0:
            return
        _shared.pop((h.backend, h.path), None)
    try:
        h.obj.close()
    except Exception:
        pass


# -- reading ------------------------------------------------------------------------------
def open_db(path, backend=None, what=''):
    """Open a database for reading (Caffe's ``db->Open(source, db::READ)``).

    ``backend``: 'lmdb', 'leveldb', a DataParameter.DB value, or None to guess from
    the files.  ``what`` prefixes error messages (e.g. the layer's name).
    A missing path or one that is not a database raises a one-line DataError.
    """
    path = os.fspath(path)
    if not path:
        raise DataError('%sno database path given (data_param.source is empty)' % what)
    if not os.path.exists(path):
        kind = (backend_name(backend).upper() + ' ') if backend is not None else ''
        raise DataError('%scannot open %sdatabase %s: no such file or directory' % (what, kind, path))
    found = detect_backend(path)
    if found is None and os.path.isfile(path):
        raise DataError('%s%s is a plain file, not an LMDB or LEVELDB database' % (what, path))
    if backend is None:
        if found is None:
            raise DataError('%s%s is not an LMDB or LEVELDB database' % (what, path))
        backend = found
    backend = backend_name(backend)
    if found is not None and found != backend:
        raise DataError('%s%s is a%s %s database, but backend %s was asked for'
                        % (what, path, 'n' if found == 'lmdb' else '', found.upper(), backend.upper()))
    if found is None and backend == 'lmdb':
        raise DataError('%scannot open LMDB database %s: no data.mdb in the folder' % (what, path))
    if found is None and backend == 'leveldb':
        raise DataError('%scannot open LEVELDB database %s: no CURRENT file in the folder' % (what, path))
    try:
        return DB(path, backend, _acquire(path, backend, what))
    except DataError as e:
        if what and not str(e).startswith(what):
            raise DataError(what + str(e)) from None
        raise


class DB:
    """A database open for reading; ``cursor()`` gives Caffe's cursor API."""

    def __init__(self, path, backend, handle):
        self.path = path
        self.backend = backend
        self._h = handle
        self._closed = False
        self._cursors = []

    def cursor(self):
        if self._closed:
            raise DataError('%s: database is closed' % self.path)
        c = (LMDBCursor if self.backend == 'lmdb' else LevelDBCursor)(self._h, self.path)
        self._cursors.append(c)
        return c

    def __len__(self):
        if self.backend == 'lmdb':
            return int(self._h.obj.stat()['entries'])
        n = 0
        with self._h.lock:
            try:
                for _ in self._h.obj.iterator(include_value=False):
                    n += 1
            except Exception as e:
                raise read_error('leveldb', self.path, e) from None
        return n

    def items(self, limit=None):
        """Every (key, value) in key order (a fresh cursor)."""
        c = self.cursor()
        try:
            n = 0
            while c.valid() and (limit is None or n < limit):
                yield c.key(), c.value()
                n += 1
                c.next()
        finally:
            c.close()

    def get(self, key):
        if isinstance(key, str):
            key = key.encode()
        if self.backend == 'lmdb':
            with self._h.obj.begin(buffers=False) as txn:
                return txn.get(key)
        return self._h.obj.get(key)

    def close(self):
        if self._closed:
            return
        self._closed = True
        for c in self._cursors:
            c.close()
        self._cursors = []
        _release(self._h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return '<DB %s %s>' % (self.backend, self.path)


class Cursor:
    """Caffe's db::Cursor: ``seek_to_first``, ``next``, ``valid``, ``key``, ``value``.

    Not for concurrent use from several threads (one thread at a time is fine).
    """

    def seek_to_first(self):
        raise NotImplementedError

    def next(self):
        raise NotImplementedError

    def valid(self):
        raise NotImplementedError

    def key(self):
        raise NotImplementedError

    def value(self):
        raise NotImplementedError

    def close(self):
        pass

    def __iter__(self):
        while self.valid():
            yield self.key(), self.value()
            self.next()


class LMDBCursor(Cursor):
    def __init__(self, handle, path):
        self.path = path
        try:
            self._txn = handle.obj.begin(write=False, buffers=False)
            self._cur = self._txn.cursor()
            self._valid = self._cur.first()
        except Exception as e:     # lmdb.CorruptedError, lmdb.Error: a damaged page
            raise read_error('lmdb', path, e) from None

    def seek_to_first(self):
        try:
            self._valid = self._cur.first()
        except Exception as e:
            raise read_error('lmdb', self.path, e) from None

    def next(self):
        try:
            self._valid = self._cur.next()
        except Exception as e:
            raise read_error('lmdb', self.path, e) from None

    def valid(self):
        return self._valid

    def key(self):
        return self._cur.key()

    def value(self):
        return self._cur.value()

    def close(self):
        if self._txn is not None:
            try:
                self._cur.close()
                self._txn.abort()
            except Exception:
                pass
            self._txn = None
            self._valid = False


class LevelDBCursor(Cursor):
    def __init__(self, handle, path):
        self.path = path
        self._h = handle
        self._it = handle.obj.iterator()
        self.seek_to_first()

    def _advance(self):
        try:
            self._kv = next(self._it)
        except StopIteration:
            self._kv = None
        except Exception as e:     # plyvel.CorruptionError, IOError: bytes, no path
            raise read_error('leveldb', self.path, e) from None

    def seek_to_first(self):
        try:
            self._it.seek_to_start()
        except Exception as e:
            raise read_error('leveldb', self.path, e) from None
        self._advance()

    def next(self):
        self._advance()

    def valid(self):
        return self._kv is not None

    def key(self):
        return self._kv[0]

    def value(self):
        return self._kv[1]

    def close(self):
        if self._it is not None:
            try:
                self._it.close()
            except Exception:
                pass
            self._it = None
            self._kv = None


# -- writing ------------------------------------------------------------------------------
def _disk_full_hint(path):
    """' (the disk is full: N bytes free in FOLDER)' when little room is left there, else ''."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.statvfs(folder)
    except OSError:
        return ''
    free = st.f_bavail * st.f_frsize
    if free < (1 << 20):
        return ' (the disk is full: %d bytes free in %s)' % (free, folder)
    return ''


class DBWriter:
    """A new database, written under a temporary name beside ``path`` and renamed
    into place by ``close()`` (or the end of a ``with`` block without error).

    ``put`` buffers records and commits every ``commit_every`` of them, as
    Caffe's tools do (1000).  LMDB's map grows as needed.  ``overwrite=False``
    refuses an existing ``path`` (Caffe's db::NEW); ``True`` replaces it atomically.
    """

    def __init__(self, path, backend='lmdb', commit_every=1000, overwrite=False):
        self.path = os.fspath(path)
        self.backend = backend_name(backend)
        self.commit_every = int(commit_every)
        self.count = 0
        self._pending = []
        if os.path.exists(self.path) and not overwrite:
            raise DataError('%s already exists: give a new database name (or remove it)' % self.path)
        if self.backend == 'leveldb':
            _plyvel()
        remove_stale_temps(os.path.dirname(os.path.abspath(self.path)), os.path.basename(self.path))
        self._ctx = atomic_path(self.path)
        self.tmp = self._ctx.__enter__()
        self._done = False
        try:
            if self.backend == 'lmdb':
                import lmdb
                self._map_size = LMDB_INITIAL_MAP_SIZE
                self._db = lmdb.open(self.tmp, map_size=self._map_size, subdir=True, lock=True,
                                     meminit=False, max_dbs=0)
            else:
                plyvel = _plyvel()
                # Caffe's LevelDB options for a new database
                self._db = plyvel.DB(self.tmp, create_if_missing=True, error_if_exists=True,
                                     block_size=65536, write_buffer_size=64 << 20, max_open_files=100)
        except DataError:
            self._abort()
            raise
        except Exception as e:
            self._abort()
            raise DataError('cannot create %s database %s: %s%s'
                            % (self.backend.upper(), self.path, db_error_text(e), _disk_full_hint(self.tmp)))

    def put(self, key, value):
        if isinstance(key, str):
            key = key.encode()
        if self.backend == 'lmdb' and len(key) > 511:
            raise DataError('%s: key %r is longer than LMDB allows (511 bytes)' % (self.path, key[:40] + b'...'))
        self._pending.append((key, bytes(value)))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self):
        if not self._pending:
            return
        try:
            self._commit()
        except DataError:
            raise
        except Exception as e:     # lmdb.Error (a full disk can surface as EIO), plyvel's, OSError
            raise self._failed(e) from None

    def _failed(self, e):
        """Remove the temporary database; the one-line error naming the file and the cause."""
        self._pending = []
        hint = _disk_full_hint(self.tmp)     # before the temporary files are removed
        self._abort()
        kept = ('the existing %s is unchanged' % self.path if os.path.exists(self.path)
                else 'nothing was left under that name')
        return DataError('cannot write %s database %s: %s%s; %s'
                         % (self.backend.upper(), self.path, db_error_text(e), hint, kept))

    def _commit(self):
        if self.backend == 'lmdb':
            import lmdb
            while True:
                try:
                    with self._db.begin(write=True) as txn:
                        for k, v in self._pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    self._map_size *= 2      # as Caffe's LMDBTransaction: double and retry
                    self._db.set_mapsize(self._map_size)
        else:
            with self._db.write_batch() as wb:
                for k, v in self._pending:
                    wb.put(k, v)
        self._pending = []

    def _abort(self):
        if self._done:
            return
        self._done = True
        try:
            if getattr(self, '_db', None) is not None:
                self._db.close()
        except Exception:
            pass
        err = DataError('aborted')
        try:
            self._ctx.__exit__(DataError, err, None)
        except DataError:
            pass

    def close(self, ok=True):
        """Commit and rename into place (``ok``), or remove the temporary database."""
        if self._done:
            return
        if not ok:
            self._abort()
            return
        try:
            self.commit()
            if self.backend == 'lmdb':
                self._db.sync(True)
            self._db.close()
        except DataError:
            raise
        except Exception as e:
            raise self._failed(e) from None
        except BaseException:
            self._abort()
            raise
        self._done = True
        self._ctx.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)
        return False
