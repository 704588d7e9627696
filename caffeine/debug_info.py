"""Caffe's ``debug_info`` lines: the mean absolute value of each blob a layer writes or reads.

Net::ForwardDebugInfo, BackwardDebugInfo and UpdateDebugInfo print these when a net (or
the solver, at display iterations) has ``debug_info: true``; the text is Caffe's, so logs compare.
"""
from __future__ import annotations

import logging

log = logging.getLogger('caffeine')


def _mean_abs(values_sum, blob):
    return values_sum / max(blob.count, 1)


def forward_info(net, i):
    """After layer ``i``'s forward: its tops' data and its parameters' data."""
    name = net.layer_names[i]
    for j, t in enumerate(net.top_vecs[i]):
        log.info('    [Forward] Layer %s, top blob %s data: %g', name,
                 net.blob_names[net.top_id_vecs[i][j]], _mean_abs(t.asum_data(), t))
    for j, blob in enumerate(net.layers[i].blobs):
        log.info('    [Forward] Layer %s, param blob %d data: %g', name, j, _mean_abs(blob.asum_data(), blob))


def backward_info(net, i):
    """After layer ``i``'s backward: the diffs of the bottoms and parameters it wrote."""
    name = net.layer_names[i]
    for j, b in enumerate(net.bottom_vecs[i]):
        if net.bottom_need_backward[i][j]:
            log.info('    [Backward] Layer %s, bottom blob %s diff: %g', name,
                     net.blob_names[net.bottom_id_vecs[i][j]], _mean_abs(b.asum_diff(), b))
    for j, p in enumerate(net.layers[i].blobs):
        if net.layers[i].param_propagate_down[j]:
            log.info('    [Backward] Layer %s, param blob %d diff: %g', name, j, _mean_abs(p.asum_diff(), p))


def backward_total(net):
    """After the whole backward pass: the L1 norms of every learnable parameter's data and diff."""
    asum_data = sum(p.asum_data() for p in net.learnable_params)
    asum_diff = sum(p.asum_diff() for p in net.learnable_params)
    log.info('    [Backward] All net params (data, diff): L1 norm = (%g, %g)', asum_data, asum_diff)


def update_info(net, pid):
    """After the update of net parameter ``pid``: its data and diff, or whose copy it is."""
    layer_id, j = net.param_layer_indices[pid]
    name = net.layer_names[layer_id]
    owner = net.param_owners[pid]
    if owner < 0:
        p = net.layers[layer_id].blobs[j]
        log.info('    [Update] Layer %s, param %d data: %g; diff: %g', name, j,
                 _mean_abs(p.asum_data(), p), _mean_abs(p.asum_diff(), p))
    else:
        owner_layer, owner_j = net.param_layer_indices[owner]
        log.info('    [Update] Layer %s, param blob %d (owned by layer %s, param %d)', name, j,
                 net.layer_names[owner_layer], owner_j)
