"""Regenerate caffeine/proto/caffe_pb2.py from protos/caffe.proto.

    python -m caffeine.proto.regen [OUT_DIR]

Uses grpcio-tools' bundled protoc (pip install -e .[dev]).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, 'protos')
OUT_DIR = os.path.join(ROOT, 'caffeine', 'proto')


def generate(out_dir=OUT_DIR):
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit('regenerating caffe_pb2 needs grpcio-tools: pip install -e .[dev]')
    rc = protoc.main(['protoc', '-I' + PROTO_DIR, '--python_out=' + out_dir,
                      os.path.join(PROTO_DIR, 'caffe.proto')])
    if rc != 0:
        raise SystemExit('protoc failed with status %d' % rc)
    return os.path.join(out_dir, 'caffe_pb2.py')


if __name__ == '__main__':
    print(generate(sys.argv[1] if len(sys.argv) > 1 else OUT_DIR))
