"""``import caffe`` for scripts that cannot be edited: ``caffe`` and ``caffe.X`` resolve to caffeine.

``enable()`` adds two import finders:

- one at the END of ``sys.meta_path`` for the name ``caffe`` itself, so it is
  consulted only after the normal finders (``sys.path``, editable installs)
  found no ``caffe``: a real pycaffe on the path is never shadowed;
- one at the front for ``caffe.X``, which answers only while ``sys.modules['caffe']``
  IS caffeine (the alias won), so that ``caffe.proto`` is not found a second time
  as a new module inside caffeine's folder; it also answers ``caffe`` when all the
  path finder has is a folder named caffe without ``__init__.py`` (a namespace
  package, never a pycaffe).

Each alias is the very module object of caffeine's (``caffe.proto.caffe_pb2 is
caffeine.proto.caffe_pb2``): protobuf descriptors are registered once, and a
layer registered through one name is seen through the other.  pycaffe's
``caffe.pycaffe`` and ``caffe._caffe`` (where pycaffe keeps Net, the solvers and
the settings) are caffeine itself.

``caffeine alias install`` writes a ``.pth`` file that calls ``enable()`` when
Python starts; ``caffeine alias uninstall`` removes it.  The ``.pth`` line loads
this file alone (standard library only), not the caffeine package: nothing is
imported at start-up until a script says ``import caffe``.

This module imports nothing of caffeine's, so that the ``.pth`` can load it by path.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

__all__ = ['enable', 'disable', 'enabled', 'pth_line', 'PTH_NAME', 'ALIASED_AS']

TARGET = 'caffeine'
ALIAS = 'caffe'
# pycaffe module names that are caffeine's package itself
ALIASED_AS = {'pycaffe': '', '_caffe': ''}
PTH_NAME = 'caffeine-caffe-alias.pth'
_MARK = '_caffeine_caffe_alias'     # on our finders, whichever copy of this module made them


def _target_name(fullname):
    """'caffe' -> 'caffeine', 'caffe.proto.caffe_pb2' -> 'caffeine.proto.caffe_pb2', else None."""
    if fullname == ALIAS:
        return TARGET
    if not fullname.startswith(ALIAS + '.'):
        return None
    rest = fullname[len(ALIAS) + 1:]
    head, _, tail = rest.partition('.')
    if head in ALIASED_AS:
        mapped = ALIASED_AS[head]
        rest = '.'.join(p for p in (mapped, tail) if p)
    return TARGET + ('.' + rest if rest else '')


class _AliasLoader(importlib.abc.Loader):
    """Hands the import system caffeine's module object itself."""

    def __init__(self, target):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        pass    # already executed, under its own name


def _namespace_only(name):
    """Whether the path finder would make ``name`` a namespace package (folders without __init__.py)."""
    spec = importlib.machinery.PathFinder.find_spec(name)
    return spec is not None and spec.loader is None and spec.submodule_search_locations is not None


class _AliasFinder(importlib.abc.MetaPathFinder):
    def __init__(self, top):
        self.top = top      # True: the name 'caffe' (last finder); False: 'caffe.X' (first finder)
        setattr(self, _MARK, True)

    def find_spec(self, fullname, path=None, target=None):
        if fullname == ALIAS and not self.top:
            # a folder named caffe with no __init__.py (a checkout, an unbuilt tree) would become a
            # namespace package ahead of the last finder: it is no pycaffe, so the alias answers
            if not _namespace_only(fullname):
                return None
        elif (fullname == ALIAS) != self.top:
            return None
        name = _target_name(fullname)
        if name is None:
            return None
        if fullname != ALIAS:
            top = sys.modules.get(TARGET)
            if top is None or sys.modules.get(ALIAS) is not top:
                return None     # 'caffe' is a real pycaffe (or not imported): not ours
        try:
            if importlib.util.find_spec(name) is None:
                return None
        except ImportError:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(name))

    def __repr__(self):
        return '<caffeine alias finder %s>' % ("'caffe'" if self.top else "'caffe.*'")


def _ours(finder):
    return getattr(finder, _MARK, False)


def enabled():
    """Whether the alias finders are in ``sys.meta_path``."""
    return any(_ours(f) for f in sys.meta_path)


def enable():
    """Let ``import caffe`` (and ``caffe.X``) resolve to caffeine when no real ``caffe`` is found."""
    if enabled():
        return
    sys.meta_path.insert(0, _AliasFinder(top=False))
    sys.meta_path.append(_AliasFinder(top=True))


def disable():
    """Remove the finders, and the ``caffe`` aliases already imported (caffeine's modules stay)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not _ours(f)]
    top = sys.modules.get(TARGET)
    if top is not None and sys.modules.get(ALIAS) is top:
        for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + '.')]:
            del sys.modules[name]


def pth_line():
    """The ``.pth`` line: find caffeine without importing it, load this file alone, enable().
    Nothing happens (and nothing is printed) when caffeine is not installed any more."""
    return ("import importlib.util as u; s = u.find_spec('%s'); "
            "p = s and s.submodule_search_locations and "
            "__import__('os').path.join(list(s.submodule_search_locations)[0], 'alias.py'); "
            "m = p and __import__('os').path.exists(p) and "
            "u.module_from_spec(u.spec_from_file_location('%s', p)); "
            "m and (m.__spec__.loader.exec_module(m), m.enable())\n" % (TARGET, _MARK))


def real_caffe_on_path():
    """The location of a ``caffe`` that the normal finders would import (the alias then stays
    unused), or None."""
    spec = importlib.machinery.PathFinder.find_spec(ALIAS)
    if spec is None:
        return None
    return spec.origin if spec.origin not in (None, 'namespace') else \
        os.pathsep.join(spec.submodule_search_locations or [])
