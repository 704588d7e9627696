"""Whole networks from Caffe's corpus against the real BVLC Caffe 1.0.

Every blob after the forward pass, and every parameter gradient after the
backward pass, equals Caffe's within 1e-4 of the array's largest magnitude.
Skipped when ../shared is absent.
"""
import pytest

from caffeine.testing import check_golden_net, golden_cases

CASES = golden_cases(kind='nets')


@pytest.mark.skipif(not CASES, reason='../shared golden cases not present')
@pytest.mark.parametrize('case', CASES)
def test_golden_net(case, mode):
    check_golden_net(case, rtol=1e-4)
