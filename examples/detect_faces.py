#!/usr/bin/env python3
"""Find the faces in an image with OpenCV's res10 SSD face detector and draw their boxes.

    caffeine zoo download face_detector_res10          # the weights, about 10 MiB
    python examples/detect_faces.py photo.jpg -o faces.png [--threshold 0.5] [--gpu]

What users did with cv2.dnn.readNetFromCaffe + blobFromImage, with caffeine and
Pillow: the image is resized to 300x300, turned to BGR, the mean (104, 177, 123)
subtracted; each row of detection_out is (image, label, score, xmin, ymin, xmax,
ymax), the box in [0, 1] of the image.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

import caffeine
from caffeine.errors import CaffeineError

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.join(HERE, '..', 'models', 'face_detector_res10', 'deploy.prototxt')
MEAN_BGR = np.array([104.0, 177.0, 123.0], dtype=np.float32)


def detect(net, image, threshold):
    """[(score, (left, top, right, bottom) in pixels)] for the faces in a PIL image."""
    w, h = image.size
    rgb = np.asarray(image.convert('RGB').resize((300, 300), Image.BILINEAR), dtype=np.float32)
    net.blobs['data'].data[0] = (rgb[:, :, ::-1] - MEAN_BGR).transpose(2, 0, 1)
    rows = net.forward()['detection_out'][0, 0]
    rows = rows[rows[:, 2] >= threshold]
    boxes = np.clip(rows[:, 3:7], 0, 1) * [w, h, w, h]
    return [(float(s), tuple(float(v) for v in b)) for s, b in zip(rows[:, 2], boxes)]


def draw(image, faces):
    out = image.convert('RGB')
    pen = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 250))
    for score, (x0, y0, x1, y1) in faces:
        pen.rectangle([x0, y0, x1, y1], outline=(0, 255, 0), width=width)
        pen.text((x0 + width, max(0, y0 - 12)), '%.2f' % score, fill=(0, 255, 0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('image')
    ap.add_argument('-o', '--output', default='faces.png', help='where to write the image with boxes')
    ap.add_argument('--threshold', type=float, default=0.5, help='lowest score kept (0.5)')
    ap.add_argument('--weights', default='zoo:face_detector_res10',
                    help='the .caffemodel (default: the zoo download)')
    ap.add_argument('--gpu', action='store_true', help='run on the GPU (CuPy)')
    args = ap.parse_args(argv)
    if args.gpu:
        caffeine.set_mode_gpu()
    try:
        net = caffeine.Net(DEPLOY, args.weights, caffeine.TEST)
        image = Image.open(args.image)
    except (CaffeineError, OSError) as e:
        print('detect_faces: %s' % e, file=sys.stderr)
        return 1
    faces = detect(net, image, args.threshold)
    draw(image, faces).save(args.output)
    for score, box in faces:
        print('face %.3f at (%.0f, %.0f, %.0f, %.0f)' % ((score,) + box))
    print('%d face(s); boxes drawn in %s' % (len(faces), args.output))
    return 0


if __name__ == '__main__':
    sys.exit(main())
