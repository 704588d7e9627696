"""caffeine's modules import each other without a cycle (module-level and function-level imports alike)."""
import ast
from pathlib import Path

import caffeine

PACKAGE = Path(caffeine.__file__).parent


def _modules():
    """{dotted module name: path} for every module of the package."""
    out = {}
    for path in PACKAGE.rglob('*.py'):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        out['.'.join(parts)] = path
    return out


def _imported(module, is_package, node, modules):
    """The package's modules that an Import/ImportFrom node names (the deepest existing one of each)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = module if is_package else module.rpartition('.')[0]
        if node.level:
            base = '.'.join(base.split('.')[:len(base.split('.')) - node.level + 1])
            base = base + '.' + node.module if node.module else base
        else:
            base = node.module
        names = [base + '.' + a.name for a in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition('.')[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph():
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding='utf-8'))
        graph[module] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module] |= _imported(module, path.name == '__init__.py', node, modules)
    return graph


def find_cycle(graph):
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state = {}            # module -> 'open' while on the path, 'done' after

    def visit(module, path):
        state[module] = 'open'
        for dep in sorted(graph[module]):
            if state.get(dep) == 'open':
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, path + [dep])
                if cycle:
                    return cycle
        state[module] = 'done'
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_right():
    graph = import_graph()
    assert 'caffeine.blob' in graph['caffeine.net']
    assert 'caffeine.weights' in graph['caffeine.net']
    assert 'caffeine.layers.normalization' in graph['caffeine.net']      # a function-level import counts too
    assert 'caffeine.data.db' in graph['caffeine.cli.train']
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import cycle: %s' % ' -> '.join(cycle)
