"""Caffe's schema (``protos/caffe.proto``) and its generated module ``caffe_pb2``.

``caffe_pb2`` is committed; regenerate it after editing the schema with
``python -m caffeine.proto.regen`` (needs grpcio-tools, in the ``dev`` extra).
"""
from . import caffe_pb2  # noqa: F401
