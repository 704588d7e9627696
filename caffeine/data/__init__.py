"""Caffe's data: databases (LMDB, LevelDB), Datum, the DataTransformer, prefetching, and the tools.

- :mod:`caffeine.data.db`: ``open_db`` (a cursor API as Caffe's ``db::Cursor``) and ``DBWriter``;
- :mod:`caffeine.data.datum`: Datum <-> arrays, image decoding with OpenCV's conventions;
- :mod:`caffeine.data.transformer`: ``DataTransformer`` (``transform_param``);
- :mod:`caffeine.data.prefetch`: background batch preparation for the data layers;
- :mod:`caffeine.data.tools`: convert_imageset, compute_mean, MNIST and CIFAR-10 converters
  (the ``caffeine data`` commands).

The layers themselves are in :mod:`caffeine.layers.data`.
"""
from .db import open_db, DBWriter, detect_backend, backend_name  # noqa: F401
from .datum import (Datum, parse_datum, array_to_datum, datum_to_array,  # noqa: F401
                    decode_image, read_image, encode_image, resize)
from .transformer import DataTransformer, load_mean_file  # noqa: F401
