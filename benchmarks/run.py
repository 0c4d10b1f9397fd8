"""`make bench`: runs every benchmark script of this folder in turn.

``benchmarks/bench_speed.py`` (training / inference speed and memory) always,
``benchmarks/bench_ri.py`` (Response Initialization cost) and
``benchmarks/bench_peft.py`` (RC against PEFT LoRA and full fine-tuning;
its LoRA rows are skipped when PEFT, the ``bench`` extra, is missing) when
present. Extra command-line arguments (e.g. ``--quick``) go to
``bench_speed.py``; ``bench_peft.py`` gets ``--quick`` when it is given;
``bench_ri.py`` runs with its defaults.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = ('bench_speed.py', 'bench_ri.py', 'bench_peft.py')


def main(argv=None):
    """Runs the benchmark scripts; returns the first non-zero exit code."""
    argv = sys.argv[1:] if argv is None else argv
    status = 0
    for name in SCRIPTS:
        path = os.path.join(HERE, name)
        if not os.path.exists(path):
            if name == 'bench_speed.py':
                print(f'benchmarks/run.py: missing {path}', file=sys.stderr)
                return 1
            print(f'# {name}: not present, skipped', flush=True)
            continue
        print(f'# === {name} ===', flush=True)
        args = {'bench_speed.py': argv,
                'bench_peft.py': [a for a in argv if a == '--quick']}.get(
                    name, [])
        code = subprocess.call([sys.executable, path, *args])
        if code and not status:
            status = code
    return status


if __name__ == '__main__':
    sys.exit(main())
