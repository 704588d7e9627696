"""Layer types caffeine does not support, the fork each comes from, and the error naming them.

A net with such layers fails with one line that names every unsupported layer, its
type and, where known, the fork the type comes from:

    layer 'corr' (type 'Correlation', from FlowNet2's Caffe) is not supported

A fork's type gets no "did you mean": it is not a misspelling of a BVLC type.  A type
no known fork defines is an unknown type, with the nearest registered names as hints.
"""
from __future__ import annotations

import difflib

_FLOWNET2 = "FlowNet2's Caffe"                 # lmb-freiburg/flownet2
_SSD = "SSD's Caffe"                            # weiliu89/caffe, branch ssd
_FRCNN = "Faster R-CNN's Caffe"                 # rbgirshick/caffe-fast-rcnn
_RFCN = "R-FCN's Caffe"                         # daijifeng001/caffe-rfcn
_DEEPLAB = "DeepLab's Caffe"                    # deeplab-public-ver2

#: type name -> the fork that defines it (types caffeine registers are never looked up here)
FORK_LAYERS = {
    # FlowNet 2.0
    'Correlation': _FLOWNET2, 'Correlation1D': _FLOWNET2, 'ChannelNorm': _FLOWNET2,
    'Resample': _FLOWNET2, 'FlowWarp': _FLOWNET2, 'Downsample': _FLOWNET2,
    'DataAugmentation': _FLOWNET2, 'FlowAugmentation': _FLOWNET2,
    'GenerateAugmentationParameters': _FLOWNET2, 'L1Loss': _FLOWNET2, 'Accum': _FLOWNET2,
    # SSD
    'AnnotatedData': _SSD, 'DetectionEvaluate': _SSD, 'VideoData': _SSD,
    'SmoothL1Loss': "Faster R-CNN's and SSD's Caffe",
    # detection and segmentation
    'ROIPooling': _FRCNN, 'Proposal': "OpenCV's dnn",
    'PSROIPooling': _RFCN, 'BoxAnnotatorOHEM': _RFCN,
    'Interp': "PSPNet's and DeepLab's Caffe", 'BN': "PSPNet's Caffe",   # hszhao/PSPNet
    'DenseCRF': _DEEPLAB, 'ImageSegData': _DEEPLAB, 'SegAccuracy': _DEEPLAB,
    'MatRead': _DEEPLAB, 'MatWrite': _DEEPLAB,
    'Upsample': "SegNet's Caffe",                    # alexgkendall/caffe-segnet
    'ImageLabelmapData': "HED's Caffe",              # s9xie/hed
    # classification and recognition nets
    'ShuffleChannel': "ShuffleNet's Caffe",          # farmingyard/ShuffleNet
    'ConvolutionDepthwise': "ShuffleNet's Caffe",
    'DepthwiseConvolution': "the DepthwiseConvolution fork",   # yonghenglh6/DepthwiseConvolution
    'Axpy': "SENet's Caffe",                         # hujie-frank/SENet
    'CenterLoss': "caffe-face",                      # ydwen/caffe-face
    'MarginInnerProduct': "SphereFace's Caffe",      # wy1iu/sphereface
}


def fork_of(type_name):
    """The fork that defines ``type_name``, or None."""
    return FORK_LAYERS.get(type_name)


def _suggestions(type_name, known):
    near = difflib.get_close_matches(type_name, list(known), n=3, cutoff=0.5)
    if not near:
        low = {k.lower(): k for k in known}
        near = [low[type_name.lower()]] if type_name.lower() in low else []
    return near


def unsupported_message(layers, known):
    """One line for the layers whose types are not registered.

    ``layers``: (layer name, type) pairs, in net order (a name may be empty);
    ``known``: the registered type names.
    """
    groups = {}   # type -> layer names, in order of first appearance
    for name, type_name in layers:
        groups.setdefault(type_name, []).append(name)
    items = []
    for type_name, names in groups.items():
        if len(names) > 1:
            who = 'layers ' + ', '.join(repr(n) for n in names)
        else:
            who = ('layer %r' % names[0]) if names[0] else 'a layer'
        fork = fork_of(type_name)
        if fork:
            items.append('%s (type %r, from %s)' % (who, type_name, fork))
            continue
        near = _suggestions(type_name, known)
        hint = ('did you mean %s?' % ' or '.join(repr(n) for n in near)) if near else ''
        if len(groups) == 1:
            return '%s: unknown layer type %r%s' % (who, type_name, '; ' + hint if hint else '')
        items.append('%s: unknown layer type %r%s' % (who, type_name, ' (%s)' % hint if hint else ''))
    if len(items) == 1:
        return items[0] + ' is not supported'
    return '%d layer types are not supported: %s' % (len(items), '; '.join(items))
