"""`import caffe` resolving to caffeine (caffeine.alias, `caffeine alias install|uninstall`).

Each check runs in a fresh interpreter, so that the finders and sys.modules of the test process
stay as they were.
"""
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import caffeine

REPO = Path(caffeine.__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    env.update(extra)
    return env


def _python(code, cwd, **extra):
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=str(cwd), env=_env(**extra),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _cli(args, cwd):
    return subprocess.run([sys.executable, '-m', 'caffeine'] + args, cwd=str(cwd), env=_env(),
                          capture_output=True, text=True, timeout=120)


def test_caffe_and_every_submodule_are_caffeines_module_objects(tmp_path):
    out = _python('''
        import sys
        import caffeine.alias
        caffeine.alias.enable()
        import caffe
        import caffe.proto.caffe_pb2, caffe.draw, caffe.io, caffe.net_spec, caffe.coord_map
        import caffe.classifier, caffe.detector, caffe.pycaffe
        from caffe.proto import caffe_pb2
        from caffe import layers as L, params as P
        from caffe.coord_map import crop
        from caffe.pycaffe import Net, SGDSolver
        import caffeine, caffeine.proto.caffe_pb2, caffeine.net_spec, caffeine.coord_map
        assert caffe is caffeine and caffe.pycaffe is caffeine
        assert caffe_pb2 is caffeine.proto.caffe_pb2 is sys.modules['caffe.proto.caffe_pb2']
        for name in ('draw', 'io', 'net_spec', 'coord_map', 'classifier', 'detector', 'layers'):
            assert sys.modules['caffe.' + name] is sys.modules['caffeine.' + name] if 'caffe.' + name in sys.modules \
                else getattr(caffe, name) is sys.modules['caffeine.' + name], name
        assert L is caffeine.layers and P is caffeine.net_spec.params and crop is caffeine.coord_map.crop
        assert Net is caffeine.Net and SGDSolver is caffeine.SGDSolver
        # one descriptor pool: a message made through one name is the other's type
        assert isinstance(caffe_pb2.NetParameter(), caffeine.proto.caffe_pb2.NetParameter)
        n = L.InnerProduct(L.Input(shape=dict(dim=[2, 3])), num_output=4)
        assert 'num_output: 4' in str(n.to_proto())
        try:
            import caffe.no_such_module
        except ImportError as e:
            print('missing:', e)
        caffeine.alias.disable()
        assert 'caffe' not in sys.modules and not caffeine.alias.enabled()
        try:
            import caffe
        except ImportError:
            print('disabled')
    ''', tmp_path)
    assert "missing: No module named 'caffe.no_such_module'" in out
    assert 'disabled' in out


@pytest.mark.parametrize('where', ['first', 'last'])
def test_a_real_caffe_on_the_path_is_never_shadowed(tmp_path, where):
    real = tmp_path / 'pycaffe_tree'
    (real / 'caffe' / 'proto').mkdir(parents=True)
    (real / 'caffe' / '__init__.py').write_text('REAL = True\n')
    (real / 'caffe' / 'proto' / '__init__.py').write_text('REAL_PROTO = True\n')
    out = _python('''
        import sys
        import caffeine.alias
        caffeine.alias.enable()
        if %r == 'first':
            sys.path.insert(0, %r)
        else:
            sys.path.append(%r)
        import caffe, caffe.proto
        import caffeine
        assert caffe is not caffeine and caffe.REAL and caffe.proto.REAL_PROTO, caffe
        print(caffe.__file__)
        try:
            import caffe.draw     # the real tree has none, and caffeine's is not slipped in
        except ImportError:
            print('no caffe.draw')
    ''' % (where, str(real), str(real)), tmp_path)
    assert out.splitlines() == [str(real / 'caffe' / '__init__.py'), 'no caffe.draw']


def test_a_folder_named_caffe_without_init_is_no_pycaffe(tmp_path):
    (tmp_path / 'tree' / 'caffe' / 'imagenet').mkdir(parents=True)     # e.g. an unbuilt tree, __init__.py gone
    out = _python("""
        import sys
        import caffeine.alias
        caffeine.alias.enable()
        sys.path.insert(0, %r)
        import caffe, caffeine
        print(caffe is caffeine)
    """ % str(tmp_path / 'tree'), tmp_path)
    assert out.split() == ['True']


def test_alias_install_writes_a_pth_that_imports_nothing_until_import_caffe(tmp_path):
    site_dir = tmp_path / 'site'
    r = _cli(['alias', 'install', '--target', str(site_dir)], tmp_path)
    assert r.returncode == 0, r.stderr
    pth = site_dir / 'caffeine-caffe-alias.pth'
    assert pth.exists() and str(pth) in r.stderr
    out = _python('''
        import site, sys
        site.addsitedir(%r)       # as Python does for site-packages at start-up
        print('caffeine' in sys.modules, 'numpy' in sys.modules)
        from caffe.proto import caffe_pb2
        import caffe, caffeine
        print(caffe is caffeine, caffe_pb2 is caffeine.proto.caffe_pb2)
    ''' % str(site_dir), tmp_path)
    assert out.split() == ['False', 'False', 'True', 'True']
    r = _cli(['alias', 'status', '--target', str(site_dir)], tmp_path)
    assert '(installed)' in r.stdout
    r = _cli(['alias', 'uninstall', '--target', str(site_dir)], tmp_path)
    assert r.returncode == 0 and not pth.exists()
    r = _cli(['alias', 'uninstall', '--target', str(site_dir)], tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == ['caffeine: error: %s: no alias file to remove '
                                     '(was it installed with other --user/--target?)' % pth]


def test_the_pth_does_nothing_when_caffeine_is_gone(tmp_path):
    site_dir = tmp_path / 'site'
    assert _cli(['alias', 'install', '--target', str(site_dir)], tmp_path).returncode == 0
    # -S and no PYTHONPATH: no site-packages, so caffeine cannot be found when the .pth runs
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    r = subprocess.run([sys.executable, '-S', '-c', 'import site, sys; n = len(sys.meta_path); '
                        'site.addsitedir(%r); print(len(sys.meta_path) - n)' % str(site_dir)],
                       cwd=str(tmp_path), capture_output=True, text=True, env=env, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, '0\n', '')


# -- BVLC's own pycaffe test suite, in place in a copy of Caffe's tree ------------------------
BVLC = os.environ.get('CAFFEINE_BVLC_CAFFE')


@pytest.mark.slow
@pytest.mark.skipif(not BVLC, reason='CAFFEINE_BVLC_CAFFE (a copy of BVLC/caffe\'s source tree) not set')
def test_bvlc_pycaffe_test_suite_passes_through_the_alias(tmp_path):
    tests = Path(BVLC) / 'python' / 'caffe' / 'test'
    assert tests.is_dir(), '%s: no python/caffe/test in CAFFEINE_BVLC_CAFFE' % BVLC
    args = ['-q', '-p', 'no:cacheprovider', '-W', 'ignore::DeprecationWarning', str(tests)]
    if shutil.which('dot') is None:    # test_draw renders PNGs, as pycaffe does, with Graphviz
        args += ['--deselect', str(tests / 'test_draw.py') + '::TestDraw::test_draw_net']
    # the tree's python/ folder is NOT on the path: its caffe/__init__.py needs the compiled _caffe
    code = ('import sys, caffeine.alias; caffeine.alias.enable(); import pytest; '
            'sys.exit(pytest.main(%r))' % args)
    r = subprocess.run([sys.executable, '-c', code], cwd=BVLC, env=_env(), capture_output=True, text=True,
                       timeout=1200)
    summary = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0, r.stdout[-4000:]
    passed = int(re.search(r'(\d+) passed', summary).group(1))
    assert 'failed' not in summary and 'error' not in summary and passed >= 50, summary
