"""The inference memory planner: blobs whose lives do not overlap share one data buffer.

Each blob's data lives from the first layer that reads or writes its buffer to the
last one.  Buffers of inputs, outputs and data layers keep their own storage; the
others are placed greedily, largest first, each into the smallest shared buffer
whose blobs' lives do not overlap its own, else into a new buffer of its size
(buffers are made largest first, so none ever grows).  Only for nets with no
backward pass (:meth:`caffeine.net.Net.plan_memory` checks).
"""
from __future__ import annotations

import dataclasses

from .blob import SyncedMemory


@dataclasses.dataclass
class BlobGroup:
    """One data buffer and the blobs on it."""
    first: int                  # first layer that reads or writes it
    last: int                   # last layer that reads or writes it
    capacity: int               # values
    blob_ids: list = dataclasses.field(default_factory=list)
    fixed: bool = False         # an input's, an output's or a data layer's: keeps its own buffer

    def overlaps(self, other):
        return not (self.first > other.last or other.first > self.last)


def blob_groups(layers, bottom_id_vecs, top_id_vecs, blobs, keep):
    """A BlobGroup for each data buffer the layers read or write, by first use;
    ``keep``: blob ids that keep their own buffer (the net's inputs and outputs)."""
    groups = {}   # id(buffer) -> BlobGroup
    for layer_id, layer in enumerate(layers):
        for bid in bottom_id_vecs[layer_id] + top_id_vecs[layer_id]:
            mem = blobs[bid].data_memory
            if mem is None:
                continue
            g = groups.setdefault(id(mem), BlobGroup(layer_id, layer_id, mem.capacity))
            g.last = layer_id
            if bid not in g.blob_ids:
                g.blob_ids.append(bid)
            g.fixed |= bid in keep or layer.is_data_layer
    return list(groups.values())


def share_buffers(groups, blobs):
    """Give the groups that are not fixed shared buffers; returns the values held
    before and after (fixed buffers counted in both)."""
    buffers = []  # (capacity, [groups])
    for g in sorted((g for g in groups if not g.fixed), key=lambda g: (-g.capacity, g.first)):
        free = [buf for buf in buffers if not any(g.overlaps(h) for h in buf[1])]
        if free:
            min(free, key=lambda buf: buf[0])[1].append(g)
        else:
            buffers.append((g.capacity, [g]))
    for capacity, members in buffers:
        mem = SyncedMemory(capacity)
        for g in members:
            for bid in g.blob_ids:
                blobs[bid].set_data_memory(mem)
    before = sum(g.capacity for g in groups)
    after = sum(g.capacity for g in groups if g.fixed) + sum(capacity for capacity, _ in buffers)
    return before, after
