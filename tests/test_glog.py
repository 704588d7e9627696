"""The log is Caffe's: glog's line format, read by Caffe's own log tools (tools/extra/parse_log.py)."""
import datetime
import logging
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest

import caffeine
from caffeine.glog import GlogFormatter
from caffeine.summary import parse_log as caffeine_parse_log

REPO = Path(caffeine.__file__).resolve().parents[1]

# glog's classic prefix: severity, MMDD, hh:mm:ss.micros, thread id (width 5), file:line, "] "
GLOG_LINE = re.compile(r'^[IWEF](\d{2})(\d{2}) (\d{2}):(\d{2}):(\d{2})\.(\d{6}) [ \d]{4}\d+ [\w.-]+:\d+\] ')

NET = '''
name: "dummy"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
'''
SOLVER = ('net: "net.prototxt"\nbase_lr: 0.05\nlr_policy: "step"\ngamma: 0.5\nstepsize: 4\nmax_iter: 6\n'
          'display: 2\ntest_iter: 2\ntest_interval: 3\nsnapshot_prefix: "snaps/d"\nrandom_seed: 3\n')


def _caffeine(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    return subprocess.run([sys.executable, '-m', 'caffeine'] + args, cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def train_log(tmp_path_factory):
    d = tmp_path_factory.mktemp('glog')
    (d / 'net.prototxt').write_text(NET)
    (d / 'solver.prototxt').write_text(SOLVER)
    r = _caffeine(['train', '--solver', 'solver.prototxt'], d)
    assert r.returncode == 0, r.stderr
    (d / 'caffe.log').write_text(r.stderr)
    return d / 'caffe.log'


# -- a parser with the expectations of BVLC's tools/extra/parse_log.py and extract_seconds.py --------
def _line_datetime(line, year):
    """extract_seconds.extract_datetime_from_line: the month and day from the first field, the time
    from the second; a line without them raises ValueError or IndexError (parse_log.py catches only
    ValueError, so an empty line would stop it)."""
    fields = line.strip().split()
    month, day = int(fields[0][1:3]), int(fields[0][3:])
    stamp = fields[1]
    pos = stamp.rfind('.')
    h, m, s = (int(x) for x in stamp[:pos].split(':'))
    return datetime.datetime(year, month, day, h, m, s, int(stamp[pos + 1:]))


def _parse_like_bvlc(lines, year):
    regex_iteration = re.compile(r'Iteration (\d+)')
    regex_train = re.compile(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)')
    regex_test = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')
    regex_lr = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')
    start = next(_line_datetime(ln, year) for ln in lines if 'Solving' in ln)
    iteration, lr = -1, float('nan')
    tables = {'train': [], 'test': []}
    rows = {'train': None, 'test': None}
    for line in lines:
        m = regex_iteration.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        seconds = (_line_datetime(line, year) - start).total_seconds()    # every line must carry a date
        m = regex_lr.search(line)
        if m:
            lr = float(m.group(1))
        for kind, regex in (('train', regex_train), ('test', regex_test)):
            m = regex.search(line)
            row, table = rows[kind], tables[kind]
            if m:
                if not row or row['NumIters'] != iteration:
                    if row:
                        table.append(row)
                    row = OrderedDict([('NumIters', iteration), ('Seconds', seconds), ('LearningRate', lr)])
                row[m.group(2)] = float(m.group(3))
            if row and table and len(row) == len(table[0]):
                table.append(row)
                row = None
            rows[kind] = row
    for table in tables.values():
        if len(table) > 1:
            table[0]['LearningRate'] = table[1]['LearningRate']
    return tables['train'], tables['test']


def test_every_line_of_a_training_log_has_glogs_classic_prefix(train_log):
    lines = train_log.read_text().splitlines()
    assert len(lines) > 20
    bad = [ln for ln in lines if not GLOG_LINE.match(ln)]
    assert bad == []
    now = datetime.datetime.now()
    month, day = (int(x) for x in GLOG_LINE.match(lines[0]).group(1, 2))
    assert (month, day) in {(now.month, now.day), ((now - datetime.timedelta(days=1)).month,
                                                   (now - datetime.timedelta(days=1)).day)}
    # Caffe's message texts after the prefix
    texts = [ln.split('] ', 1)[1] for ln in lines]
    assert 'Solving dummy' in texts and texts[-1] == 'Optimization Done.'
    assert 'Iteration 3, Testing net (#0)' in texts
    assert any(re.fullmatch(r'Iteration 2 \([\d.e+-]+ iter/s, [\d.e+-]+s/2 iters\), loss = [\d.e+-]+', t)
               for t in texts)
    assert 'Iteration 4, lr = 0.025' in texts       # step policy: 0.05 * 0.5 ^ floor(4 / 4)
    # the source location is the Python file and line that logged
    assert re.search(r' solver\.py:\d+\] Solving dummy$', lines[texts.index('Solving dummy')])


def test_a_parser_with_parse_logs_expectations_reads_train_and_test_rows(train_log):
    year = datetime.datetime.fromtimestamp(os.path.getctime(train_log)).year
    train, test = _parse_like_bvlc(train_log.read_text().splitlines(), year)
    assert [r['NumIters'] for r in train] == [0, 2, 4]
    # as with Caffe's logs: "Iteration N, lr = " follows the train outputs, so a row carries the rate
    # of the display before it (0.025 from iteration 4 on)
    assert [r['LearningRate'] for r in train] == [0.05, 0.05, 0.05]
    assert all(list(r) == ['NumIters', 'Seconds', 'LearningRate', 'loss'] for r in train)
    assert [r['NumIters'] for r in test] == [0, 3, 6]
    assert all(list(r) == ['NumIters', 'Seconds', 'LearningRate', 'acc', 'loss'] for r in test)
    seconds = [r['Seconds'] for r in test]
    assert seconds == sorted(seconds) and seconds[0] >= 0
    # the same values caffeine's own reader (caffeine plot) takes from the log
    ours = caffeine_parse_log(train_log.read_text().splitlines())
    assert [(int(r['NumIters']), r['acc']) for r in test] == ours['test']['acc']
    assert [(int(r['NumIters']), r['loss']) for r in train] == ours['train_outputs']['loss']


def test_an_error_stays_one_caffeine_error_line_after_glog_lines(tmp_path):
    (tmp_path / 'net.prototxt').write_text(NET)
    (tmp_path / 'solver.prototxt').write_text(SOLVER.replace('net.prototxt', 'missing.prototxt'))
    r = _caffeine(['train', '--solver', 'solver.prototxt'], tmp_path)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines[-1].startswith('caffeine: error: ') and 'missing.prototxt' in lines[-1]
    assert all(GLOG_LINE.match(ln) for ln in lines[:-1])


def _record(msg, level=logging.INFO, created=None):
    rec = logging.LogRecord('caffeine', level, '/x/y/solver.py', 239, msg, (), None)
    if created is not None:
        rec.created = created
    return rec


def test_glog_formatter_prefix_fields_and_multiline_messages():
    t = datetime.datetime(2026, 12, 3, 8, 4, 27, 123456).timestamp()
    tid = '%5d' % __import__('threading').get_native_id()
    assert GlogFormatter().format(_record('Iteration 100, lr = 0.01', created=t)) == \
        'I1203 08:04:27.123456 %s solver.py:239] Iteration 100, lr = 0.01' % tid
    assert GlogFormatter(year=True).format(_record('x', logging.WARNING, created=t)).startswith(
        'W20261203 08:04:27.123456 ')
    assert GlogFormatter().format(_record('e', logging.ERROR)).startswith('E')
    assert GlogFormatter().format(_record('f', logging.CRITICAL)).startswith('F')
    assert GlogFormatter().format(_record('d', logging.DEBUG)).startswith('I')
    two = GlogFormatter().format(_record('a: \nb: 1', created=t)).split('\n')
    assert two == ['I1203 08:04:27.123456 %s solver.py:239] a: ' % tid, 'I1203 08:04:27.123456 %s solver.py:239] b: 1' % tid]


def test_caffeine_plot_reads_newer_glogs_year_prefix_and_caffeines_own():
    classic = ['I1203 08:04:27.123456 12345 solver.cpp:239] Iteration 100 (9.1 iter/s, 11s/100 iters), loss = 0.25',
               'I1203 08:04:27.123500 12345 solver.cpp:258]     Train net output #0: loss = 0.25 (* 1 = 0.25 loss)',
               'I1203 08:04:27.123600 12345 sgd_solver.cpp:106] Iteration 100, lr = 0.00992565',
               'I1203 08:04:28.000000 12345 solver.cpp:330] Iteration 200, Testing net (#0)',
               'I1203 08:04:29.000000 12345 solver.cpp:397]     Test net output #0: accuracy = 0.97']
    newer = [re.sub(r'^I1203', 'I20261203', ln) for ln in classic]
    for lines in (classic, newer):
        p = caffeine_parse_log(lines)
        assert p['train'] == [(100, 0.25)] and p['lr'] == [(100, 0.00992565)]
        assert p['test'] == {'accuracy': [(200, 0.97)]} and p['train_outputs'] == {'loss': [(100, 0.25)]}
