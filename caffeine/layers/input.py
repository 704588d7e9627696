"""Input: the net's entry points, filled from Python (pycaffe) or by the solver."""
from ..layer import Layer, register


@register('Input')
class InputLayer(Layer):
    """Tops shaped by ``input_param.shape``: one shape for every top, or one per top.

    bottom: none.  top: one or more blobs, filled from outside the net.
    """
    exact_num_bottom = 0
    min_top = 1
    is_data_layer = True

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        n = len(shapes)
        if n not in (0, 1, len(top)):
            raise self.error('input_param has %d shapes for %d tops: give one shape, or one per top' % (n, len(top)))
        for i, t in enumerate(top):
            if n:
                t.reshape(tuple(shapes[0 if n == 1 else i].dim))

    def reshape(self, bottom, top):
        pass  # tops keep whatever shape was set (pycaffe may reshape them)

    def forward(self, bottom, top):
        pass
