"""caffeine's error types: each prints as one clear line (no traceback unless --debug)."""


class CaffeineError(Exception):
    """Base of every error caffeine raises on bad input; its message is one line."""


class PrototxtError(CaffeineError):
    """A prototxt that does not parse: ``path:line:col: message``."""


class GraphError(CaffeineError):
    """A net that cannot be built: names the layer, the blob and the shapes."""


class LayerError(CaffeineError):
    """A layer with bad parameters or bottoms: names the layer and its type."""


class WeightsError(CaffeineError):
    """Weights that do not fit the net."""


class DataError(CaffeineError):
    """Bad data: names the layer, the file and the key or line."""


class SolverError(CaffeineError):
    """A solver file that cannot be run."""
