"""The notebooks in examples/ run from top to bottom (nbclient, the ipykernel kernel) and
reach the figures they state; committed without outputs."""
import os
import re
from pathlib import Path

import pytest

import caffeine

REPO = Path(caffeine.__file__).resolve().parents[1]
EXAMPLES = REPO / 'examples'
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob('*.ipynb'))


def _read(name):
    nbformat = pytest.importorskip('nbformat')
    return nbformat.read(str(EXAMPLES / name), as_version=4)


def _stdout(nb):
    return ''.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code'
                   for o in c.get('outputs', []) if o.get('output_type') == 'stream')


def test_the_four_notebooks_are_there():
    assert NOTEBOOKS == ['01-learning-lenet.ipynb', '02-fine-tuning.ipynb', '03-net-surgery.ipynb',
                         '04-feature-extraction.ipynb']


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = _read(name)
    code = [c for c in nb.cells if c.cell_type == 'code']
    assert code
    for c in code:
        assert c.get('outputs') == [] and c.get('execution_count') is None, c.source[:80]


def _check_lenet(out):
    acc = float(re.search(r'iteration 301: train loss [\d.]+, test accuracy ([\d.]+)', out).group(1))
    assert acc >= 0.9
    pred = re.search(r'predicted: \[([\d ]+)\]', out).group(1).split()
    labels = re.search(r'labels: +\[([\d ]+)\]', out).group(1).split()
    assert len(pred) == len(labels) == 8
    assert sum(p == t for p, t in zip(pred, labels)) >= 6


def _check_fine_tuning(out):
    assert float(re.search(r'digits 0-4, test accuracy after 300 iterations: ([\d.]+)', out).group(1)) >= 0.95
    assert "copied:  ['conv1', 'conv2', 'fc1']" in out and "ignored: ['score']" in out
    final = {k: float(v) for k, v in re.findall(r'^(fine-tuned|frozen features|from scratch) +([\d.]+)$', out, re.M)}
    assert set(final) == {'fine-tuned', 'frozen features', 'from scratch'}
    assert all(v >= 0.7 for v in final.values()), final


def _check_net_surgery(out):
    assert re.search(r'fc1 +weights \(500, 800\) .* fc1-conv +weights \(500, 50, 4, 4\)', out)
    labels = re.search(r'labels of the four digits: \[([\d ]+)\]', out).group(1).split()
    corners = re.search(r'classes at the corners: +\[([\d ]+)\]', out).group(1).split()
    assert labels == corners == ['7', '2', '1', '0']
    assert len(re.findall(r'classifier says (\d), map says \1, largest difference', out)) == 3


def _check_feature_extraction(out):
    assert 'features (2000, 500)  labels (2000,)' in out
    feat = float(re.search(r'fc1 features +nearest neighbour of the same digit: ([\d.]+)%', out).group(1))
    pix = float(re.search(r'raw pixels +nearest neighbour of the same digit: ([\d.]+)%', out).group(1))
    assert feat >= 90 and feat > pix


CHECKS = {'01-learning-lenet.ipynb': _check_lenet, '02-fine-tuning.ipynb': _check_fine_tuning,
          '03-net-surgery.ipynb': _check_net_surgery, '04-feature-extraction.ipynb': _check_feature_extraction}


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    pytest.importorskip('matplotlib')
    pytest.importorskip('ipykernel')
    nbclient = pytest.importorskip('nbclient')
    nb = _read(name)
    # the kernel inherits the environment: this checkout first, scratch files in tmp_path
    monkeypatch.setenv('PYTHONPATH', os.pathsep.join([str(REPO)] + [p for p in
                                                                    [os.environ.get('PYTHONPATH')] if p]))
    monkeypatch.setenv('CAFFEINE_EXAMPLES_OUT', str(tmp_path))
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name='python3',
                                     resources={'metadata': {'path': str(EXAMPLES)}})
    client.execute()
    CHECKS[name](_stdout(nb))
