"""Throughput of caffeine's Data layer (images/s), and the share of a training step spent
waiting for data.

    python benchmarks/data_throughput.py                 # raw and JPEG, 256x256, crop 227 + mirror
    python benchmarks/data_throughput.py --quick         # a smoke run
    python benchmarks/data_throughput.py --threads 4 --batch-size 128 --seconds 10
    python benchmarks/data_throughput.py --no-train      # skip the solver part

It builds a temporary LMDB of synthetic 256x256 colour images (smooth, photo-like
content, so that the JPEGs have realistic sizes), once with raw uint8 Datums and
once with JPEG-encoded ones (quality 90), and times the Data layer at TRAIN with
``crop_size: 227 mirror: true`` (plus mean_value and scale, as a real net would):
forward after forward, so the figure is what the prefetch threads deliver.

The last part trains with ``caffeine.get_solver`` and reports the share of each
step that the Data layer's forward spent waiting for a batch (0 % when the
prefetch threads keep up): a small net (Data -> conv -> relu -> pool -> ip ->
loss) on the JPEG database, and the model library's LeNet and CIFAR10-quick
(``models/*/train_val.prototxt``, their Data layers pointed at temporary
databases of synthetic 28x28 grey and 32x32 colour raw Datums, as
``caffeine data mnist`` and ``caffeine data cifar10`` write them).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # this checkout's caffeine

import caffeine  # noqa: E402
from caffeine.blob import Blob  # noqa: E402
from caffeine.data.db import DBWriter  # noqa: E402
from caffeine.layer import create_layer  # noqa: E402
from caffeine.proto import caffe_pb2  # noqa: E402
from google.protobuf import text_format  # noqa: E402


def synthetic_image(rng, size=256):
    """A smooth colour picture with some texture: upsampled low-frequency noise, gradients, grain."""
    from PIL import Image
    low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img += 40 * np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy), np.sin(4 * (xx + yy))], -1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)          # (H, W, 3) RGB


def build_db(path, n, encoded, seed=0, quality=90):
    from PIL import Image
    rng = np.random.default_rng(seed)
    total = 0
    with DBWriter(path, 'lmdb') as w:
        for i in range(n):
            rgb = synthetic_image(rng)
            d = caffe_pb2.Datum()
            if encoded:
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, 'JPEG', quality=quality)
                d.data = buf.getvalue()
                d.encoded = True
            else:
                d.channels, d.height, d.width = 3, rgb.shape[0], rgb.shape[1]
                d.data = np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1)).tobytes()
            d.label = i % 1000
            v = d.SerializeToString()
            total += len(v)
            w.put(b'%08d' % i, v)
    return total / n


def data_layer(source, batch, prefetch):
    lp = text_format.Parse(
        'name: "data" type: "Data" top: "data" top: "label" '
        'transform_param { crop_size: 227 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017 } '
        'data_param { source: "%s" batch_size: %d backend: LMDB prefetch: %d }' % (source, batch, prefetch),
        caffe_pb2.LayerParameter())
    layer = create_layer(lp, caffe_pb2.TRAIN)
    top = [Blob(), Blob()]
    layer.SetUp([], top)
    return layer, top


def time_layer(source, batch, prefetch, seconds, warmup=2):
    layer, top = data_layer(source, batch, prefetch)
    try:
        for _ in range(warmup):
            layer.Forward([], top)
        n = 0
        t0 = time.perf_counter()
        wait0 = layer.wait_time
        while True:
            layer.Forward([], top)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 3:
                break
        return n * batch / dt, (layer.wait_time - wait0) / dt
    finally:
        layer.close()


def build_small_db(path, n, channels, size, seed=0):
    """Raw uint8 Datums of channels x size x size (as convert_mnist_data / convert_cifar_data)."""
    rng = np.random.default_rng(seed)
    with DBWriter(path, 'lmdb') as w:
        for i in range(n):
            d = caffe_pb2.Datum(channels=channels, height=size, width=size, label=int(i % 10))
            d.data = rng.integers(0, 256, (channels, size, size), dtype=np.uint8).tobytes()
            w.put(b'%05d' % i, d.SerializeToString())


def model_share(model, tmp, steps, batch=None):
    """(waiting share, s/step) of training models/<model>/train_val.prototxt on synthetic data
    (at its own batch size, or ``batch``)."""
    from caffeine.prototxt import read_net_param
    root = Path(__file__).resolve().parents[1]
    param = read_net_param(str(root / 'models' / model / 'train_val.prototxt'))
    channels, size = (1, 28) if model == 'lenet' else (3, 32)
    src = str(tmp / (model + '_lmdb'))
    build_small_db(src, 2000, channels, size)
    for lp in param.layer:
        if lp.type == 'Data':
            lp.data_param.source = src
            if batch:
                lp.data_param.batch_size = int(batch)
            if lp.transform_param.mean_file:          # no mean file here: the CIFAR-10 means
                lp.transform_param.ClearField('mean_file')
                lp.transform_param.mean_value.extend([125.3, 123.0, 113.9])
    return _solver_share(param, steps)


def _solver_share(net_param, steps):
    from caffeine import get_solver
    sp = caffe_pb2.SolverParameter()
    sp.net_param.CopyFrom(net_param)
    sp.base_lr, sp.lr_policy, sp.momentum, sp.max_iter = 0.001, 'fixed', 0.9, 10 ** 6
    sp.display, sp.snapshot_after_train = 0, False
    sp.type = 'SGD'
    solver = get_solver(sp)
    layer = solver.net.layer_by_name('data')
    try:
        solver.step(2)                      # warm-up
        w0 = layer.wait_time
        t0 = time.perf_counter()
        solver.step(steps)
        dt = time.perf_counter() - t0
        return (layer.wait_time - w0) / dt, dt / steps
    finally:
        solver.close()


def train_share(source, batch, steps):
    """Share of a training step that the Data layer spent waiting."""
    net = '''
name: "small"
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { crop_size: 227 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017 }
        data_param { source: "%s" batch_size: %d backend: LMDB } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 16 kernel_size: 11 stride: 8 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 1000 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
''' % (source, batch)
    return _solver_share(text_format.Parse(net, caffe_pb2.NetParameter()), steps)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--images', type=int, default=512, help='records in each temporary database')
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--prefetch', type=int, default=4)
    ap.add_argument('--threads', type=int, default=None, help='prefetch threads (CAFFEINE_DATA_THREADS)')
    ap.add_argument('--seconds', type=float, default=6.0, help='time per measurement')
    ap.add_argument('--steps', type=int, default=8, help='solver steps for the waiting share')
    ap.add_argument('--no-train', action='store_true', help='skip the solver part')
    ap.add_argument('--gpu', action='store_true', help='GPU mode (batches copied to the device ahead)')
    ap.add_argument('--quick', action='store_true', help='a smoke run: few images, short timings')
    args = ap.parse_args(argv)
    if args.quick:
        args.images, args.seconds, args.steps = 128, 1.5, 2
    if args.threads:
        os.environ['CAFFEINE_DATA_THREADS'] = str(args.threads)
    if args.gpu:
        caffeine.set_mode_gpu()
    from caffeine.data.prefetch import default_threads
    caffeine.set_random_seed(1)
    tmp = Path(tempfile.mkdtemp(prefix='caffeine-data-bench-'))
    try:
        print('caffeine Data layer throughput: %d images 256x256x3, batch %d, crop 227 + mirror (TRAIN), '
              'prefetch %d, %d thread(s), %s, %d CPU(s)' % (args.images, args.batch_size, args.prefetch,
                                                           default_threads(), 'GPU' if args.gpu else 'CPU',
                                                           os.cpu_count() or 1))
        results = {}
        for kind, encoded in (('raw', False), ('jpeg', True)):
            src = str(tmp / (kind + '_lmdb'))
            t0 = time.perf_counter()
            size = build_db(src, args.images, encoded)
            build = time.perf_counter() - t0
            ips, wait = time_layer(src, args.batch_size, args.prefetch, args.seconds)
            results[kind] = ips
            print('  %-4s  %8.0f images/s  (record %6.1f KB; %4.0f%% of the time waiting for the workers; '
                  'db built in %.1f s)' % (kind, ips, size / 1024, 100 * wait, build))
        if not args.no_train:
            # The share of a training step waiting for data, with caffeine's solver.
            share, step = train_share(str(tmp / 'jpeg_lmdb'), args.batch_size, args.steps)
            print('  training (JPEG, small conv net, SGD): %.0f ms/step, %.1f%% of each step waiting for data'
                  % (1000 * step, 100 * share))
            for model, what in (('lenet', 'LeNet, batch 64'), ('cifar10_quick', 'CIFAR10-quick, batch 100')):
                share, step = model_share(model, tmp, max(args.steps, 20) if not args.quick else 3)
                print('  training (%s, raw Datums): %.1f ms/step, %.1f%% of each step waiting for data'
                      % (what, 1000 * step, 100 * share))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
