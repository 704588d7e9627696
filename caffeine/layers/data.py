"""Data layers: Data (LMDB/LevelDB), ImageData, WindowData (prefetched in background
threads), HDF5Data, HDF5Output, MemoryData and DummyData.

Input lives in ``layers/input.py``.  The Data, ImageData and WindowData layers
prepare ``data_param.prefetch`` batches ahead (default 4) in daemon threads
(see ``caffeine.data.prefetch``); call ``layer.close()`` to stop them early
(they also stop when the layer is garbage-collected and at interpreter exit).
Their random choices (crops, mirrors, shuffles) come from a generator made by
``caffeine.backend.child_rng()`` at setup and are drawn batch by batch in order,
so a run under ``caffeine.set_random_seed`` is repeatable.

Errors in the data are one-line ``DataError``s naming the layer, the file and
the key or line.
"""
from __future__ import annotations

import os
import weakref

import numpy as np

from .. import backend
from ..errors import DataError
from ..layer import Layer, register
from ..proto import caffe_pb2
from ..utils import log
from ..data.datum import datum_to_array, parse_datum, read_image, resize, decode_image, value_to_array
from ..data.db import open_db
from ..data.listfile import read_label_list, read_text_lines
from ..data.prefetch import DataSource, Prefetcher
from ..data.transformer import DataTransformer, load_mean_file
from .. import runtime
from ..fillers import fill

TRAIN = caffe_pb2.TRAIN


def _where(layer):
    return 'layer %r (%s): ' % (layer.name, layer.type)


def _solver_split():
    """(solver_count, solver_rank): rank r of N reads the TRAIN records at r modulo N."""
    return runtime.solver_count(), runtime.solver_rank()


def _resolve_relative(path, base_file):
    """``path`` as given (relative to the working directory, as Caffe), else relative to the
    folder of ``base_file`` when only that exists."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    alt = os.path.join(os.path.dirname(os.path.abspath(base_file)), path)
    return alt if os.path.exists(alt) else path


class BasePrefetchingDataLayer(Layer):
    """A data layer whose batches are prepared ahead in background threads.

    Subclasses set the tops' shapes in ``setup`` and call ``self._start(source)`` with
    their :class:`~caffeine.data.prefetch.DataSource`, which must not hold a
    reference to the layer (so that it can be collected).
    """
    exact_num_bottom = 0
    is_data_layer = True
    _pf = None

    def data_error(self, msg):
        return DataError(_where(self) + msg)

    def _start(self, source):
        self._source = source
        self._launch()

    def _launch(self):
        # The source's state after each claimed batch, so that get_state() can
        # say where the batches this layer has *served* end, however far the
        # threads have read ahead.
        src = self._source
        states = self._states = {}
        self._initial_state = src.get_state()
        self._served = 0

        def claim_and_record(k):
            job = src.claim(k)
            states[k] = src.get_state()
            return job
        slots = int(self.layer_param.data_param.prefetch)
        self._pf = Prefetcher('%r (%s)' % (self.name, self.type), claim_and_record, src.make,
                              slots=slots, close_hook=src.close)
        self._finalizer = weakref.finalize(self, self._pf.close)

    def get_state(self):
        """Where the next batch starts (position, shuffle order, random state), as plain
        JSON values: the solver saves it beside each snapshot, so a resumed run
        reads the same batches as one that never stopped."""
        if self._pf is None:
            return None
        st = self._initial_state if self._served == 0 else self._states[self._served - 1]
        return {'type': self.type, 'source': st}

    def set_state(self, state):
        """Continue from a state of get_state(): batches read ahead are dropped."""
        if not state or state.get('type') != self.type or self._pf is None:
            raise self.data_error('cannot restore the data position from %r' % (state,))
        self._finalizer.detach()
        self._pf.close(keep_source=True)     # the new threads read on from the same source
        if not self._pf.stopped:
            raise self.data_error('a prefetch thread did not stop; cannot restore the data position')
        self._source.set_state(state['source'])
        self._launch()

    def reshape(self, bottom, top):
        pass   # tops take each batch's shape in forward, as Caffe's BasePrefetchingDataLayer

    def forward(self, bottom, top):
        if self._pf is None:
            raise self.data_error('forward before setup')
        slot = self._pf.next()
        self._served += 1
        self._states.pop(self._served - 2, None)
        try:
            gpu = backend.is_gpu() and slot.on_device
            for i, t in enumerate(top):
                if i >= slot.count():
                    break
                v = slot.data(i)
                if tuple(t.shape) != v.shape:
                    t.reshape(v.shape)
                if gpu:
                    t.xdata[...] = slot.device_view(i)
                else:
                    backend.copy_into(t.xdata, v)
        finally:
            self._pf.release(slot)   # the slot's next copy waits (on the device) for these copies

    @property
    def wait_time(self):
        """Seconds forward has spent waiting for batches (0 when prefetch keeps up)."""
        return self._pf.wait_time if self._pf is not None else 0.0

    def close(self):
        """Stop the prefetch threads and close the source; idempotent."""
        if self._pf is not None:
            self._pf.close()


# -- Data (LMDB / LevelDB) --------------------------------------------------------------------
class _DBSource(DataSource):
    """Sequential reader of a database for the Data layer (no reference to the layer)."""

    def __init__(self, db, where, batch_size, transformer, train):
        self.db = db
        self.where = where
        self.at = '%s%s: ' % (where, db.path)
        self.cursor = db.cursor()
        self.batch_size = batch_size
        self.tf = transformer
        self.train = train
        self.offset = 0
        self.rng = None
        self.restarts = 0
        self.pos = 0        # records from the first one to the cursor

    def next(self):
        self.cursor.next()
        self.pos += 1
        if not self.cursor.valid():
            log.debug('%sRestarting data prefetching from start.', self.where)
            self.restarts += 1
            self.cursor.seek_to_first()
            self.pos = 0
        self.offset += 1

    def get_state(self):
        return {'pos': self.pos, 'offset': self.offset, 'restarts': self.restarts,
                'rng': self.rng.bit_generator.state if self.rng is not None else None}

    def set_state(self, st):
        self.cursor.seek_to_first()
        self.pos = 0
        for _ in range(int(st['pos'])):
            self.cursor.next()
            self.pos += 1
            if not self.cursor.valid():
                raise DataError('%sthe database has fewer than %d records: cannot restore the position'
                                % (self.at, int(st['pos']) + 1))
        self.offset, self.restarts = int(st['offset']), int(st['restarts'])
        if st.get('rng') is not None:
            self.rng.bit_generator.state = st['rng']

    def close(self):
        self.db.close()

    def skip_records(self, n):
        for _ in range(n):
            self.next()

    def claim(self, k):
        size, rank = _solver_split() if self.train else (1, 0)
        recs = []
        for _ in range(self.batch_size):
            if size > 1:
                while self.offset % size != rank:
                    self.next()
            recs.append((self.cursor.key(), self.cursor.value()))
            self.next()
        rand = self.tf.draw(self.rng, self.batch_size) if self.tf.needs_rand() else None
        return recs, rand

    def make(self, job, slot):
        recs, rand = job
        mode = self.tf.decode_mode
        arrs, labels = [], []
        for key, value in recs:
            a, lab = value_to_array(value, mode, self.at, key)
            arrs.append(a)
            labels.append(lab)
        c, h, w = arrs[0].shape
        out = slot.buffer(0, (len(arrs),) + self.tf.output_shape(c, h, w, self._what(recs, 0)))
        self.tf.transform_list(arrs, rand, out, lambda i: self._what(recs, i))
        slot.buffer(1, (len(arrs),))[:] = labels

    def _what(self, recs, i):
        key = recs[i][0]
        return '%skey %r: ' % (self.db.path + ': ', key.decode('utf-8', 'backslashreplace'))


@register('Data')
class DataLayer(BasePrefetchingDataLayer):
    """Caffe's Data layer: Datum records from an LMDB or LevelDB database.

    top: data (batch_size x C x H x W, transformed), and optionally label (batch_size).
    data_param: source, backend (LEVELDB by default, as Caffe; LMDB), batch_size,
    rand_skip, prefetch.  transform_param: scale, mirror, crop_size, mean_file,
    mean_value, force_color, force_gray.  Wraps around at the end of the database.
    """
    min_top = 1
    max_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.data_param
        where = _where(self)
        if p.batch_size <= 0:
            raise self.data_error('data_param.batch_size must be positive (got %d)' % p.batch_size)
        tf = DataTransformer(self.layer_param.transform_param, self.phase, where)
        db = open_db(p.source, p.backend, where)
        try:
            src = _DBSource(db, where, int(p.batch_size), tf, self.phase == TRAIN)
            if not src.cursor.valid():
                raise self.data_error('%s: the database is empty' % p.source)
            log.info('%sOpened %s %s', where, db.backend, p.source)
            if p.rand_skip:
                skip = int(backend.rng().integers(0, p.rand_skip))
                log.info('%sSkipping first %d data points.', where, skip)
                src.skip_records(skip)
                src.offset = 0
            key, value = src.cursor.key(), src.cursor.value()
            datum = parse_datum(value, src.at, key)
            arr = datum_to_array(datum, tf.decode_mode, src.at, key)
            if not datum.encoded and (tf.param.force_color or tf.param.force_gray):
                log.warning('%sforce_color and force_gray only apply to encoded Datums', where)
            c, h, w = arr.shape
            tf.check_example(c, h, w, '%s: key %r: ' % (p.source, key.decode('utf-8', 'backslashreplace')))
            shape = (int(p.batch_size),) + tf.output_shape(c, h, w)
        except BaseException:
            db.close()
            raise
        top[0].reshape(shape)
        if len(top) > 1:
            top[1].reshape((int(p.batch_size),))
        log.info('%soutput data size: %s', where, ','.join(str(s) for s in shape))
        src.rng = backend.child_rng()
        self._start(src)


# -- ImageData ---------------------------------------------------------------------------------
class _ImageListSource(DataSource):
    """The lines of an ImageData list file, read in order (shuffled at each pass if asked)."""

    def __init__(self, where, list_path, entries, root, batch_size, new_height, new_width, is_color,
                 shuffle, transformer):
        self.where = where
        self.list_path = list_path
        self.lines = list(entries)
        self.root = root
        self.batch_size = batch_size
        self.nh, self.nw = new_height, new_width
        self.is_color = is_color
        self.shuffle = shuffle
        self.tf = transformer
        self.pos = 0
        self.rng = None

    def shuffle_lines(self):
        order = self.rng.permutation(len(self.lines))
        self.lines = [self.lines[i] for i in order]

    def get_state(self):
        return {'pos': self.pos, 'order': [e[2] for e in self.lines], 'rng': self.rng.bit_generator.state}

    def set_state(self, st):
        by_line = {e[2]: e for e in self.lines}
        lines = [by_line.get(no) for no in st['order']]
        if len(lines) != len(self.lines) or None in lines:
            raise DataError('%sthe list file %s has changed: cannot restore the position'
                            % (self.where, self.list_path))
        self.lines, self.pos = lines, int(st['pos'])
        self.rng.bit_generator.state = st['rng']

    def path_of(self, name):
        return (self.root + name) if self.root else name

    def load(self, entry):
        name, label, no = entry
        at = '%s%s:%d: ' % (self.where, self.list_path, no)
        return read_image(self.path_of(name), self.nh, self.nw, self.is_color, at)

    def claim(self, k):
        batch = []
        for _ in range(self.batch_size):
            batch.append(self.lines[self.pos])
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0
                if self.shuffle:
                    self.shuffle_lines()
        rand = self.tf.draw(self.rng, self.batch_size) if self.tf.needs_rand() else None
        return batch, rand

    def make(self, job, slot):
        batch, rand = job
        imgs = [self.load(e) for e in batch]
        c, h, w = imgs[0].shape
        first = '%s:%d: ' % (self.list_path, batch[0][2])
        out = slot.buffer(0, (len(imgs),) + self.tf.output_shape(c, h, w, first))
        self.tf.transform_list(imgs, rand, out, lambda i: '%s:%d: ' % (self.list_path, batch[i][2]))
        labels = slot.buffer(1, (len(imgs),))
        labels[:] = [e[1] for e in batch]


@register('ImageData')
class ImageDataLayer(BasePrefetchingDataLayer):
    """Caffe's ImageData layer: images named in a list file of ``path label`` lines.

    top: data, label.  image_data_param: source, root_folder (prefixed to each path),
    batch_size, shuffle (again at each pass), rand_skip, new_height/new_width
    (resize, both or neither), is_color.  transform_param: crop, mirror, mean, scale.
    """
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        where = _where(self)
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.data_error('image_data_param: new_height and new_width must be set together')
        if p.batch_size <= 0:
            raise self.data_error('image_data_param.batch_size must be positive')
        tf = DataTransformer(self.layer_param.transform_param, self.phase, where)
        entries = read_label_list(p.source, where)
        if not entries:
            raise self.data_error('list file %s is empty' % p.source)
        src = _ImageListSource(where, p.source, entries, p.root_folder, int(p.batch_size),
                               int(p.new_height), int(p.new_width), bool(p.is_color), bool(p.shuffle), tf)
        src.rng = backend.child_rng()
        if p.shuffle:
            src.shuffle_lines()
        elif self.phase == TRAIN and _solver_split()[1] > 0 and not p.rand_skip:
            log.warning('%sShuffling or skipping recommended for multi-GPU', where)
        log.info('%sA total of %d images.', where, len(entries))
        if p.rand_skip:
            skip = int(backend.rng().integers(0, p.rand_skip))
            if skip >= len(entries):
                raise self.data_error('rand_skip: cannot skip %d of %d images' % (skip, len(entries)))
            log.info('%sSkipping first %d data points.', where, skip)
            src.pos = skip
        img = src.load(src.lines[src.pos])
        c, h, w = img.shape
        tf.check_example(c, h, w, '%s:%d: ' % (p.source, src.lines[src.pos][2]))
        top[0].reshape((int(p.batch_size),) + tf.output_shape(c, h, w))
        top[1].reshape((int(p.batch_size),))
        self._start(src)


# -- WindowData (R-CNN) --------------------------------------------------------------------------
def _read_window_file(path, root, fg_threshold, bg_threshold, where):
    """The R-CNN window file: '# index / path / channels / height / width / n / n window lines'."""
    toks = []
    for no, line in read_text_lines(path, 'window file', where, "R-CNN windows ('# index', image path, "
                                    "channels, height, width, count, window lines)"):
        for t in line.split():
            toks.append((t, no))
    if not toks:
        raise DataError('%swindow file %s is empty' % (where, path))
    images, fg, bg = [], [], []
    i = 0

    def take(kind):
        nonlocal i
        if i >= len(toks):
            raise DataError('%s%s: unexpected end of file (expected %s)' % (where, path, kind))
        t, no = toks[i]
        i += 1
        try:
            return (int(t) if kind != 'overlap' else float(t)), no
        except ValueError:
            raise DataError('%s%s:%d: %s %r is not a number' % (where, path, no, kind, t))

    while i < len(toks):
        t, no = toks[i]
        if t != '#':
            raise DataError("%s%s:%d: expected '# image_index', got %r" % (where, path, no, t))
        i += 1
        index, _ = take('image index')
        if i >= len(toks):
            raise DataError('%s%s: unexpected end of file (expected an image path)' % (where, path))
        img_path, no = toks[i]
        i += 1
        channels, _ = take('channels')
        height, _ = take('height')
        width, _ = take('width')
        nwin, _ = take('number of windows')
        images.append(((root + img_path) if root else img_path, (channels, height, width), no))
        img_id = len(images) - 1
        for _ in range(nwin):
            label, lno = take('label')
            overlap, _ = take('overlap')
            x1, _ = take('x1')
            y1, _ = take('y1')
            x2, _ = take('x2')
            y2, _ = take('y2')
            win = (img_id, label, overlap, x1, y1, x2, y2)
            if overlap >= fg_threshold:
                if label <= 0:
                    raise DataError('%s%s:%d: a foreground window needs a label > 0, got %d' % (where, path, lno, label))
                fg.append(win)
            elif overlap < bg_threshold:
                bg.append((img_id, 0, 0.0, x1, y1, x2, y2))
    return images, fg, bg


def _c_round(x):
    """C's round() (half away from zero) of a float32 value."""
    x = float(x)
    return int(np.floor(abs(x) + 0.5) * (1 if x >= 0 else -1))


class _WindowSource(DataSource):
    """WindowData's foreground and background windows, drawn at random (R-CNN's sampling)."""

    def __init__(self, where, path, images, fg, bg, batch_size, fg_fraction, crop, context_pad, square,
                 mirror, scale, mean, mean_values, cache):
        self.where = where
        self.path = path
        self.images = images
        self.fg, self.bg = fg, bg
        self.batch_size = batch_size
        self.num_fg = int(np.float32(batch_size) * np.float32(fg_fraction))
        self.crop = crop
        self.context_pad = context_pad
        self.square = square
        self.mirror = mirror
        self.scale = np.float32(scale)
        self.mean = mean
        self.mean_values = mean_values
        self.cache = {} if cache else None
        self.rng = None

    def get_state(self):
        return {'rng': self.rng.bit_generator.state}

    def set_state(self, st):
        self.rng.bit_generator.state = st['rng']

    def claim(self, k):
        nb = self.batch_size - self.num_fg
        bi = self.rng.integers(0, len(self.bg), size=nb) if nb else np.zeros(0, np.int64)
        fi = self.rng.integers(0, len(self.fg), size=self.num_fg) if self.num_fg else np.zeros(0, np.int64)
        wins = [self.bg[j] for j in bi] + [self.fg[j] for j in fi]
        mirror = (self.rng.integers(0, 2, size=self.batch_size).astype(bool) if self.mirror
                  else np.zeros(self.batch_size, bool))
        return wins, mirror

    def image(self, img_id):
        path, _, no = self.images[img_id]
        at = '%s%s:%d: ' % (self.where, self.path, no)
        if self.cache is not None:
            data = self.cache.get(img_id)
            if data is None:
                try:
                    with open(path, 'rb') as f:
                        data = f.read()
                except OSError as e:
                    raise DataError('%scannot read image %s (%s)' % (at, path, e.strerror or e))
                self.cache[img_id] = data
            return decode_image(data, 'color', at + path + ': ')
        return read_image(path, 0, 0, True, at)

    def make(self, job, slot):
        wins, mirror = job
        crop = self.crop
        f32 = np.float32
        out = slot.buffer(0, (self.batch_size, 3, crop, crop))
        out[...] = 0
        labels = slot.buffer(1, (self.batch_size,))
        for item, (win, do_mirror) in enumerate(zip(wins, mirror)):
            img_id, label, _, x1, y1, x2, y2 = win
            img = self.image(img_id)
            _, ih, iw = img.shape
            pad_w = pad_h = 0
            cw, ch = crop, crop
            if self.context_pad > 0 or self.square:
                context_scale = f32(crop) / f32(crop - 2 * self.context_pad)
                half_h = f32(float(y2 - y1 + 1) / 2.0)
                half_w = f32(float(x2 - x1 + 1) / 2.0)
                cx = f32(x1) + half_w
                cy = f32(y1) + half_h
                if self.square:
                    if half_h > half_w:
                        half_w = half_h
                    else:
                        half_h = half_w
                x1 = _c_round(cx - half_w * context_scale)
                x2 = _c_round(cx + half_w * context_scale)
                y1 = _c_round(cy - half_h * context_scale)
                y2 = _c_round(cy + half_h * context_scale)
                unclipped_h, unclipped_w = y2 - y1 + 1, x2 - x1 + 1
                px1, py1 = max(0, -x1), max(0, -y1)
                px2, py2 = max(0, x2 - iw + 1), max(0, y2 - ih + 1)
                x1 += px1
                x2 -= px2
                y1 += py1
                y2 -= py2
                clipped_h, clipped_w = y2 - y1 + 1, x2 - x1 + 1
                sx = f32(crop) / f32(unclipped_w)
                sy = f32(crop) / f32(unclipped_h)
                cw = _c_round(f32(clipped_w) * sx)
                ch = _c_round(f32(clipped_h) * sy)
                px1 = _c_round(f32(px1) * sx)
                px2 = _c_round(f32(px2) * sx)
                py1 = _c_round(f32(py1) * sy)
                pad_h = py1
                pad_w = px2 if do_mirror else px1
                if pad_h + ch > crop:
                    ch = crop - pad_h
                if pad_w + cw > crop:
                    cw = crop - pad_w
            x1, y1 = max(0, x1), max(0, y1)
            x2, y2 = min(iw - 1, x2), min(ih - 1, y2)
            if x2 < x1 or y2 < y1 or cw <= 0 or ch <= 0:
                labels[item] = label
                continue
            win_img = resize(np.ascontiguousarray(img[:, y1:y2 + 1, x1:x2 + 1]), ch, cw)
            if do_mirror:
                win_img = win_img[:, :, ::-1]
            dst = out[item, :, pad_h:pad_h + ch, pad_w:pad_w + cw]
            if self.mean is not None:
                mo = (self.mean.shape[2] - crop) // 2
                m = self.mean[:, mo + pad_h:mo + pad_h + ch, mo + pad_w:mo + pad_w + cw]
                np.subtract(win_img, m, out=dst, dtype=np.float32, casting='unsafe')
            elif self.mean_values is not None:
                mv = self.mean_values if len(self.mean_values) == 3 else np.repeat(self.mean_values, 3)
                np.subtract(win_img, mv.reshape(3, 1, 1), out=dst, dtype=np.float32, casting='unsafe')
            else:
                dst[...] = win_img
            if self.scale != 1:
                np.multiply(dst, self.scale, out=dst)
            labels[item] = label


@register('WindowData')
class WindowDataLayer(BasePrefetchingDataLayer):
    """Caffe's WindowData layer (R-CNN): windows sampled from a window file, warped to crop_size.

    top: data (batch_size x 3 x crop x crop), label.  window_data_param: source, root_folder,
    batch_size, fg_threshold, bg_threshold, fg_fraction, context_pad, crop_mode (warp|square),
    cache_images, scale.  transform_param: crop_size (required), mirror, mean_file or mean_value.
    """
    exact_num_top = 2

    def setup(self, bottom, top):
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        where = _where(self)
        crop = int(tp.crop_size)
        if crop <= 0:
            raise self.data_error('transform_param.crop_size must be positive for WindowData')
        if p.batch_size <= 0:
            raise self.data_error('window_data_param.batch_size must be positive')
        if p.crop_mode not in ('warp', 'square'):
            raise self.data_error('window_data_param.crop_mode must be warp or square, not %r' % p.crop_mode)
        if 2 * p.context_pad >= crop:
            raise self.data_error('context_pad %d too large for crop_size %d' % (p.context_pad, crop))
        images, fg, bg = _read_window_file(p.source, p.root_folder, p.fg_threshold, p.bg_threshold, where)
        for path, (c, h, w), no in images:
            if c != 3:
                raise self.data_error('%s:%d: image %s has %d channels; WindowData reads colour images (3)'
                                      % (p.source, no, path, c))
        num_fg = int(np.float32(p.batch_size) * np.float32(p.fg_fraction))
        if num_fg and not fg:
            raise self.data_error('%s has no foreground windows (overlap >= %g)' % (p.source, p.fg_threshold))
        if p.batch_size - num_fg and not bg:
            raise self.data_error('%s has no background windows (overlap < %g)' % (p.source, p.bg_threshold))
        has_mean_file = tp.HasField('mean_file') and tp.mean_file != ''
        if has_mean_file and len(tp.mean_value):
            raise self.data_error('transform_param: give mean_file or mean_value, not both')
        mean = load_mean_file(tp.mean_file, where) if has_mean_file else None
        if mean is not None and (mean.shape[0] != 3 or mean.shape[1] < crop or mean.shape[2] < crop):
            raise self.data_error('mean_file %s is %s; WindowData needs 3 channels of at least %dx%d'
                                  % (tp.mean_file, 'x'.join(map(str, mean.shape)), crop, crop))
        mv = np.asarray(tp.mean_value, np.float32) if len(tp.mean_value) else None
        if mv is not None and len(mv) not in (1, 3):
            raise self.data_error('%d mean_value(s): give 1 or 3' % len(mv))
        scale = p.scale if p.HasField('scale') else tp.scale
        log.info('%sforeground windows: %d, background windows: %d, images: %d', where, len(fg), len(bg), len(images))
        src = _WindowSource(where, p.source, images, fg, bg, int(p.batch_size), p.fg_fraction, crop,
                            int(p.context_pad), p.crop_mode == 'square',
                            bool(tp.mirror) and self.phase == TRAIN, scale, mean, mv, bool(p.cache_images))
        src.rng = backend.child_rng()
        top[0].reshape((int(p.batch_size), 3, crop, crop))
        top[1].reshape((int(p.batch_size),))
        self._start(src)


# -- HDF5Data / HDF5Output ---------------------------------------------------------------------
def _h5py():
    import h5py
    return h5py


@register('HDF5Data')
class HDF5DataLayer(Layer):
    """Caffe's HDF5Data layer: tops named after datasets of the .h5 files listed in ``source``.

    hdf5_data_param: source (a text file, one .h5 path per line), batch_size, shuffle
    (the file order at each pass and the rows of each file).  Batches cross file
    boundaries; every file is read whole, as Caffe does.  With N solvers in TRAIN,
    rank r reads the rows whose position in the stream is r modulo N.
    """
    exact_num_bottom = 0
    min_top = 1
    is_data_layer = True

    def data_error(self, msg):
        return DataError(_where(self) + msg)

    def setup(self, bottom, top):
        p = self.layer_param.hdf5_data_param
        where = _where(self)
        if p.batch_size <= 0:
            raise self.data_error('hdf5_data_param.batch_size must be positive')
        self.batch_size = int(p.batch_size)
        self.shuffle = bool(p.shuffle)
        self.names = list(self.layer_param.top)
        files = []
        for no, line in read_text_lines(p.source, 'HDF5 list file', where,
                                        'the paths of HDF5 files, one per line'):
            for tok in line.split():
                path = _resolve_relative(tok, p.source)
                if not os.path.isfile(path):
                    raise self.data_error('%s:%d: HDF5 file %s not found' % (p.source, no, tok))
                files.append((path, no))
        if not files:
            raise self.data_error('HDF5 list file %s names no files' % p.source)
        log.info('%sNumber of HDF5 files: %d', where, len(files))
        self.list_path = p.source
        self.files = files
        self.file_perm = np.arange(len(files))
        if self.shuffle:
            backend.rng().shuffle(self.file_perm)
        self.current_file = 0
        self.offset = 0      # rows read or skipped so far, as Caffe's offset_ (for the ranks' shards)
        self._load(self.files[self.file_perm[0]])
        for t, arr in zip(top, self.arrays):
            t.reshape((self.batch_size,) + arr.shape[1:])
        self._shapes = [a.shape[1:] for a in self.arrays]

    def get_state(self):
        """The file order, the file and row being read, and the row order (JSON values)."""
        return {'type': self.type, 'file_perm': [int(i) for i in self.file_perm],
                'current_file': int(self.current_file), 'current_row': int(self.current_row),
                'data_perm': [int(i) for i in self.data_perm], 'offset': int(self.offset)}

    def set_state(self, st):
        if not st or st.get('type') != self.type or len(st['file_perm']) != len(self.files):
            raise self.data_error('cannot restore the data position from this state (the file list changed?)')
        self.file_perm = np.asarray(st['file_perm'])
        self.current_file = int(st['current_file'])
        self._load(self.files[self.file_perm[self.current_file]], shuffle=False)
        if len(st['data_perm']) != self.rows:
            raise self.data_error('cannot restore the data position: %s changed'
                                  % self.files[self.file_perm[self.current_file]][0])
        self.data_perm = np.asarray(st['data_perm'])
        self.current_row = int(st['current_row'])
        self.offset = int(st.get('offset', 0))

    def _load(self, entry, shuffle=True):
        h5py = _h5py()
        path, no = entry
        at = _where(self) + '%s: ' % path
        try:
            f = h5py.File(path, 'r')
        except Exception as e:
            raise DataError('%scannot open HDF5 file (listed at %s:%d) (%s)'
                            % (at, self.list_path, no, str(e).splitlines()[0] if str(e) else type(e).__name__))
        arrays = []
        with f:
            for name in self.names:
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise DataError('%sno dataset %r (the tops name the datasets; the file has %s)'
                                    % (at, name, ', '.join(sorted(f.keys())) or 'none'))
                ds = f[name]
                if ds.ndim < 1:
                    raise DataError('%sdataset %r is a scalar; it needs a first (example) axis' % (at, name))
                try:
                    arrays.append(np.asarray(ds[...], dtype=np.float32))
                except Exception as e:
                    raise DataError('%sdataset %r cannot be read as numbers (%s)' % (at, name, e))
        num = arrays[0].shape[0]
        if num == 0:
            raise DataError('%sdataset %r has no rows' % (at, self.names[0]))
        for name, a in zip(self.names[1:], arrays[1:]):
            if a.shape[0] != num:
                raise DataError('%sdataset %r has %d rows but %r has %d' % (at, name, a.shape[0], self.names[0], num))
        shapes = getattr(self, '_shapes', None)
        if shapes is not None:
            for name, a, s in zip(self.names, arrays, shapes):
                if a.shape[1:] != s:
                    raise DataError('%sdataset %r has rows of shape %s, the first file %s'
                                    % (at, name, list(a.shape[1:]), list(s)))
        self.arrays = arrays
        self.rows = num
        self.current_row = 0
        self.data_perm = np.arange(num)
        if self.shuffle and shuffle:
            backend.rng().shuffle(self.data_perm)

    def _next_file(self):
        if len(self.files) > 1:
            self.current_file += 1
            if self.current_file == len(self.files):
                self.current_file = 0
                if self.shuffle:
                    backend.rng().shuffle(self.file_perm)
            self._load(self.files[self.file_perm[self.current_file]])
        else:
            self.current_row = 0
            if self.shuffle:
                backend.rng().shuffle(self.data_perm)

    def reshape(self, bottom, top):
        for t, s in zip(top, self._shapes):
            t.reshape((self.batch_size,) + s)

    def forward(self, bottom, top):
        size, rank = _solver_split() if self.phase == TRAIN else (1, 0)
        filled = 0
        chunks = [[] for _ in top]
        while filled < self.batch_size:
            need, avail = self.batch_size - filled, self.rows - self.current_row
            if size > 1:
                # this rank's rows of the file's rest, then the row after the last one taken
                keep = np.arange((rank - self.offset) % size, avail, size)[:need]
                k = len(keep)
                step = int(keep[-1]) + 1 if k == need else avail
                rows = self.data_perm[self.current_row + keep]
            else:
                k = step = min(need, avail)
                rows = self.data_perm[self.current_row:self.current_row + k]
            for j in range(len(top)):
                a = self.arrays[j]
                chunks[j].append(a[rows] if self.shuffle or size > 1 else a[self.current_row:self.current_row + k])
            filled += k
            self.current_row += step
            self.offset += step
            if self.current_row == self.rows:
                self._next_file()
        for j, t in enumerate(top):
            batch = chunks[j][0] if len(chunks[j]) == 1 else np.concatenate(chunks[j])
            backend.copy_into(t.xdata, batch)


@register('HDF5Output')
class HDF5OutputLayer(Layer):
    """Caffe's HDF5Output layer: writes its two bottoms as datasets ``data`` and ``label``
    of ``hdf5_output_param.file_name`` (created at setup).  Each forward appends its
    batch (Caffe's own layer could write one batch only).  ``close()`` closes the file.
    """
    exact_num_bottom = 2
    exact_num_top = 0

    def setup(self, bottom, top):
        fn = self.layer_param.hdf5_output_param.file_name
        if not fn:
            raise self.error('hdf5_output_param.file_name is required')
        h5py = _h5py()
        try:
            d = os.path.dirname(os.path.abspath(fn))
            os.makedirs(d, exist_ok=True)
            self._file = h5py.File(fn, 'w')
        except Exception as e:
            raise DataError('%scannot create %s (%s)' % (_where(self), fn, str(e).splitlines()[0] if str(e) else e))
        self.file_name = fn
        self._finalizer = weakref.finalize(self, self._file.close)

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise self.error('data has %d rows but label %d' % (bottom[0].num, bottom[1].num))

    @staticmethod
    def _legacy(blob):
        return (blob.num, blob.channels, blob.height, blob.width)

    def _append(self, name, blob):
        arr = backend.to_host(blob.xdata).reshape(self._legacy(blob)).astype(np.float32)
        f = self._file
        if name not in f:
            f.create_dataset(name, data=arr, maxshape=(None,) + arr.shape[1:], chunks=True)
            return
        ds = f[name]
        if ds.shape[1:] != arr.shape[1:]:
            raise self.error('%s: batch of shape %s does not match the earlier %s'
                             % (name, list(arr.shape), list(ds.shape)))
        n = ds.shape[0]
        ds.resize(n + arr.shape[0], axis=0)
        ds[n:] = arr

    def forward(self, bottom, top):
        if not self._file:
            raise self.error('the output file is closed')
        self._append('data', bottom[0])
        self._append('label', bottom[1])
        self._file.flush()

    def backward(self, top, propagate_down, bottom):
        pass

    def close(self):
        if getattr(self, '_file', None):
            self._file.close()


# -- MemoryData ------------------------------------------------------------------------------
@register('MemoryData')
class MemoryDataLayer(Layer):
    """Caffe's MemoryData layer: batches of arrays given from Python.

    top: data (batch_size x channels x height x width), label (batch_size).
    memory_data_param: batch_size, channels, height, width.  Give the arrays with
    ``reset(data, labels, n)`` (pycaffe's ``net.set_input_arrays(data, labels)``):
    ``n`` examples, a multiple of batch_size, served batch by batch and round again.
    ``add_datum_vector(datums)`` transforms Datums with transform_param first.
    """
    exact_num_bottom = 0
    exact_num_top = 2
    is_data_layer = True

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.batch_size = int(p.batch_size)
        self.channels, self.height, self.width = int(p.channels), int(p.height), int(p.width)
        if self.batch_size * self.channels * self.height * self.width <= 0:
            raise self.error('batch_size, channels, height, and width must be specified and positive '
                             'in memory_data_param')
        self._data = None
        self._labels = None
        self.n = 0
        self.pos = 0
        self.has_new_data = False
        self._tf = None
        self.reshape(bottom, top)

    def reshape(self, bottom, top):
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))

    def reset(self, data, labels, n=None):
        """Serve ``data`` (n x channels x height x width) and ``labels`` (n values) from now on."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        size = self.channels * self.height * self.width
        if n is None:
            n = data.shape[0] if data.ndim else 0
        n = int(n)
        if n <= 0:
            raise self.error('reset: n must be positive')
        if n % self.batch_size:
            raise self.error('reset: n = %d must be a multiple of batch size %d' % (n, self.batch_size))
        if data.size < n * size or (data.ndim == 4 and tuple(data.shape[1:]) != (self.channels, self.height, self.width)):
            raise self.error('reset: data of shape %s, expected %d x %d x %d x %d'
                             % (list(data.shape), n, self.channels, self.height, self.width))
        if labels.size < n:
            raise self.error('reset: %d labels for %d examples' % (labels.size, n))
        if self.layer_param.HasField('transform_param'):
            log.warning('%sMemoryData does not transform array data on reset()', _where(self))
        self._data = np.ascontiguousarray(data, dtype=np.float32).reshape(-1)[:n * size].reshape(
            n, self.channels, self.height, self.width)
        self._labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(-1)[:n]
        self.n = n
        self.pos = 0

    def set_input_arrays(self, data, labels):
        """pycaffe's ``Net.set_input_arrays`` for this layer: float32 4-D data, labels of n values."""
        self.reset(data, labels, np.asarray(data).shape[0])

    def add_datum_vector(self, datums):
        """Caffe's AddDatumVector: transform Datums (transform_param) and serve them."""
        if self.has_new_data:
            raise self.error("can't add data until the current data has been consumed")
        n = len(datums)
        if n == 0 or n % self.batch_size:
            raise self.error('add_datum_vector: %d Datums; give a positive multiple of batch size %d'
                             % (n, self.batch_size))
        if self._tf is None:
            self._tf = DataTransformer(self.layer_param.transform_param, self.phase, _where(self))
        arrs = [datum_to_array(d, self._tf.decode_mode, _where(self)) for d in datums]
        out = np.empty((n, self.channels, self.height, self.width), np.float32)
        c, h, w = arrs[0].shape
        if self._tf.output_shape(c, h, w) != (self.channels, self.height, self.width):
            raise self.error('Datums transform to %s, the layer is %dx%dx%d'
                             % ('x'.join(map(str, self._tf.output_shape(c, h, w))), self.channels, self.height, self.width))
        rand = self._tf.draw(backend.rng(), n) if self._tf.needs_rand() else None
        if all(a.shape == (c, h, w) for a in arrs):
            self._tf.transform_batch(np.stack(arrs), rand, out)
        else:
            self._tf.transform_list(arrs, rand, out)
        self.reset(out, np.array([d.label for d in datums], np.float32), n)
        self.has_new_data = True

    def set_batch_size(self, new_size):
        if self.has_new_data:
            raise self.error("can't change batch_size until the current data has been consumed")
        self.batch_size = int(new_size)

    def forward(self, bottom, top):
        if self._data is None:
            raise self.error('needs data: call reset(data, labels, n) first (pycaffe: net.set_input_arrays)')
        b = self.batch_size
        top[0].reshape((b, self.channels, self.height, self.width))
        top[1].reshape((b,))
        backend.copy_into(top[0].xdata, self._data[self.pos:self.pos + b])
        backend.copy_into(top[1].xdata, self._labels[self.pos:self.pos + b])
        self.pos = (self.pos + b) % self.n
        if self.pos == 0:
            self.has_new_data = False


# -- DummyData -----------------------------------------------------------------------------
@register('DummyData')
class DummyDataLayer(Layer):
    """Caffe's DummyData layer: tops filled by fillers (constant 0 by default).

    dummy_data_param: data_filler (none, one for all tops, or one per top), shape (one
    for all tops or one per top) or the legacy num/channels/height/width.  Constant
    tops are filled once at setup; others are refilled at each forward.
    """
    exact_num_bottom = 0
    min_top = 1
    is_data_layer = True

    def setup(self, bottom, top):
        p = self.layer_param.dummy_data_param
        nt = len(top)
        nf = len(p.data_filler)
        if nf not in (0, 1, nt):
            raise self.error('number of data fillers must be 0, 1 or equal to the number of tops: %d; '
                             'you specified %d data fillers' % (nt, nf))
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        shapes = []
        if legacy:
            if len(p.shape):
                raise self.error('both shape and legacy fields (num, channels, height, width) were specified')
            for field in ('num', 'channels', 'height', 'width'):
                k = len(getattr(p, field))
                if k not in (1, nt):
                    raise self.error("must specify '%s' once, or once per top blob (%d); specified %d"
                                     % (field, nt, k))
            for i in range(nt):
                shapes.append(tuple(int(getattr(p, f)[0 if len(getattr(p, f)) == 1 else i])
                                    for f in ('num', 'channels', 'height', 'width')))
        else:
            if len(p.shape) not in (1, nt):
                raise self.error("must specify 'shape' once, or once per top blob (%d); specified %d"
                                 % (nt, len(p.shape)))
            for i in range(nt):
                shapes.append(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        if nf <= 1:
            if nf == 0:
                fp = caffe_pb2.FillerParameter()
                fp.type = 'constant'
                fp.value = 0
            else:
                fp = p.data_filler[0]
            self._fillers = [fp]
        else:
            self._fillers = list(p.data_filler)
        self._refill = [fp.type != 'constant' for fp in self._fillers]
        self._shapes = shapes
        for t, s in zip(top, shapes):
            t.reshape(s)
        # constant tops are filled once, here (Caffe's refill_ trick)
        for i, t in enumerate(top):
            fid = i if len(self._fillers) > 1 else 0
            if not self._refill[fid]:
                fill(t, self._fillers[fid])

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for i, t in enumerate(top):
            fid = i if len(self._fillers) > 1 else 0
            if self._refill[fid]:
                fill(t, self._fillers[fid])
