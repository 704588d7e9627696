"""Shell completion of the `caffeine` command (click's), as the README tells users to set it up."""
import os
import subprocess
import sys
from pathlib import Path

import caffeine

REPO = Path(caffeine.__file__).resolve().parents[1]


def complete(env_extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), **env_extra)
    r = subprocess.run([sys.executable, '-m', 'caffeine'], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_bash_completion_script_and_answers():
    script = complete({'_CAFFEINE_COMPLETE': 'bash_source'})
    assert 'complete -o nosort -F _caffeine_completion caffeine' in script
    assert '_CAFFEINE_COMPLETE=bash_complete' in script
    # what the script asks the command: subcommands, then a subcommand's options
    assert complete({'_CAFFEINE_COMPLETE': 'bash_complete', 'COMP_WORDS': 'caffeine tr',
                     'COMP_CWORD': '1'}).split() == ['plain,train']
    opts = complete({'_CAFFEINE_COMPLETE': 'bash_complete', 'COMP_WORDS': 'caffeine train --tens',
                     'COMP_CWORD': '2'}).split()
    assert opts == ['plain,--tensorboard', 'plain,--tensorboard-histograms']
    assert complete({'_CAFFEINE_COMPLETE': 'bash_complete', 'COMP_WORDS': 'caffeine data co',
                     'COMP_CWORD': '2'}).split() == ['plain,compute-mean', 'plain,convert-imageset']
