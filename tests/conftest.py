import pytest

import caffeine
from caffeine import backend


@pytest.fixture(params=['cpu', pytest.param('gpu', marks=pytest.mark.gpu)])
def mode(request):
    """Run a test on NumPy and, where CuPy and a GPU are present, on CuPy."""
    if request.param == 'gpu':
        if not backend.gpu_available():
            pytest.skip('no CuPy/GPU')
        caffeine.set_mode_gpu()
    else:
        caffeine.set_mode_cpu()
    yield request.param
    caffeine.set_mode_cpu()


@pytest.fixture(autouse=True)
def _seed():
    caffeine.set_random_seed(1701)
    yield
