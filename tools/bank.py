"""Inspect and maintain a task bank: list, info, verify, remove, copy-task,
prune, restore.

    python tools/bank.py list BANK [--json]
    python tools/bank.py info BANK TASK [--json]
    python tools/bank.py verify BANK [--json]
    python tools/bank.py remove BANK TASK
    python tools/bank.py copy-task SRC DST TASK [--replace]
    python tools/bank.py prune BANK [--dry-run]
    python tools/bank.py restore BANK TASK [--version V]

Reads take the bank's shared lock; every change is one atomic commit under
its exclusive lock (docs/bank.md), safe while other tools use the bank.

Exit status: 0 success, 1 bug (traceback), 2 an error you can fix (one
paragraph: unknown task, a file that fails verification, banks of different
filter banks ...), 3 the machine refused (permission, disk), 130
interrupted (a change either happened completely or not at all).
"""
import json
import sys
import warnings

from _common import make_parser, run


def _size(n):
    """Bytes as a short human-readable string."""
    if n is None:
        return '?'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024


def _metrics(info, most=3):
    """``name=value`` for the first metrics of a version's info."""
    metrics = info.get('metrics')
    if not isinstance(metrics, dict) or not metrics:
        return '-'
    items = [f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
             for k, v in list(metrics.items())[:most]]
    return ' '.join(items) + (' ...' if len(metrics) > most else '')


def _family(info, rc_cfg):
    """The modulator family and rank of a task: its info's, else the
    bank's rc_cfg."""
    source = info if 'modulator' in info else (rc_cfg or {})
    family = source.get('modulator')
    if family is None:
        return '-'
    rank = source.get('rank')
    return f'{family}(r={rank})' if rank and family in ('auto', 'lowrank') \
        else str(family)


def _table(rows):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(str(c).ljust(w) for c, w in zip(r, widths))
                     .rstrip() for r in rows)


def _print_json(obj):
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    print()


# -- subcommands -------------------------------------------------------------
def cmd_list(args, lib):
    desc = lib.TaskBank(args.bank).describe()
    if args.json:
        return _print_json(desc)
    tasks = desc['tasks']
    stored = sum(t['stored_bytes'] for t in tasks.values())
    kept = sum(t['kept'] for t in tasks.values())
    print(f'bank {desc["path"]}: format {desc["format_version"]}, '
          f'{len(tasks)} task(s), {_size(stored)} in task files '
          f'({kept} kept previous version(s)), shared '
          f'{_size(desc["shared"]["size"])}')
    cfg = desc['rc_cfg']
    cfg_text = ' '.join(f'{k}={cfg[k]}' for k in
                        ('modulator', 'rank', 'budget', 'nff', 'task_norms')
                        if cfg.get(k) is not None) if cfg else 'not recorded'
    print(f'fingerprint {desc["fingerprint"]}, keep_versions '
          f'{desc["keep_versions"]}, rc_cfg: {cfg_text}')
    if not tasks:
        return
    rows = [('TASK', 'VERSION', 'SIZE', 'KEPT', 'TYPE', 'MODULATOR',
             'CREATED', 'METRICS')]
    for name, t in tasks.items():
        info = t['info']
        rows.append((name, t['version'], _size(t['size']), t['kept'],
                     info.get('type') or '-', _family(info, cfg),
                     info.get('created') or '-', _metrics(info)))
    print(_table(rows))


def cmd_info(args, lib):
    bank = lib.TaskBank(args.bank)
    versions = bank.task_versions(args.task)
    if args.json:
        return _print_json(dict(bank=bank.path, task=args.task,
                                versions=versions))
    current = versions[0]
    print(f'task {args.task!r} in bank {bank.path}')
    for key, value in sorted(current['info'].items()):
        print(f'  {key}: {json.dumps(value, sort_keys=True, default=str)}')
    print('versions (0 = current):')
    rows = [('INDEX', 'VERSION', 'SIZE', 'TENSORS', 'CREATED', 'REPLACED',
             'METRICS', 'FILE')]
    for v in versions:
        rows.append((v['index'], v['version'], _size(v['size']),
                     v['tensors'] if v['tensors'] is not None else '?',
                     v['info'].get('created') or '-',
                     v['replaced'] or ('current' if v['current'] else '-'),
                     _metrics(v['info']), v['file']))
    print(_table(rows))
    if len(versions) > 1:
        print(f'restore a kept version with: tools/bank.py restore '
              f'{args.bank} {args.task} --version INDEX')


def cmd_verify(args, lib):
    bank = lib.TaskBank(args.bank)
    try:
        with warnings.catch_warnings():
            # The leftovers are listed below instead.
            warnings.simplefilter('ignore', lib.BankWarning)
            leftovers = bank.verify()
    except lib.BankError as err:
        if args.json:
            _print_json(dict(bank=bank.path, ok=False, problems=getattr(
                err, 'problems', [str(err)]), leftovers=None))
        raise
    tasks = bank.describe()['tasks']
    files = 1 + sum(1 + t['kept'] for t in tasks.values())
    if args.json:
        return _print_json(dict(bank=bank.path, ok=True, files=files,
                                tasks=len(tasks), problems=[],
                                leftovers=leftovers))
    print(f'bank {bank.path}: OK, {files} file(s) verified (shared state, '
          f'{len(tasks)} task(s) with their kept versions)')
    if leftovers:
        print(f'{len(leftovers)} leftover file(s) not named by the manifest '
              f'(ignored by every read; remove them with tools/bank.py '
              f'prune {args.bank}):')
        for path in leftovers:
            print(f'  {path}')


def cmd_remove(args, lib):
    bank = lib.TaskBank(args.bank)
    versions = bank.task_versions(args.task)
    bank.remove_task(args.task)
    print(f'removed task {args.task!r} from {bank.path} ({len(versions)} '
          f'version(s): {", ".join(v["version"] for v in versions)})')


def cmd_copy_task(args, lib):
    src, dst = lib.TaskBank(args.src), lib.TaskBank(args.dst)
    version = lib.copy_task(src, dst, args.task, replace=args.replace)
    print(f'copied task {args.task!r} (version {version["version"]}) from '
          f'{src.path} to {dst.path}')


def cmd_prune(args, lib):
    bank = lib.TaskBank(args.bank)
    paths = bank.leftovers() if args.dry_run else bank.prune()
    verb = 'would delete' if args.dry_run else 'deleted'
    print(f'bank {bank.path}: {verb} {len(paths)} leftover file(s)')
    for path in paths:
        print(f'  {path}')


def _version(text):
    """``--version``: a short number is an index, else a sha256 prefix."""
    return int(text) if text.isdigit() and len(text) < 4 else text


def cmd_restore(args, lib):
    bank = lib.TaskBank(args.bank)
    before = bank.task_versions(args.task)[0]
    restored = bank.restore_task(args.task, args.version)
    print(f'task {args.task!r} in {bank.path}: version '
          f'{restored["version"]} is current again; version '
          f'{before["version"]}, current until now, is kept as previous '
          f'version 1')


COMMANDS = {'list': cmd_list, 'info': cmd_info, 'verify': cmd_verify,
            'remove': cmd_remove, 'copy-task': cmd_copy_task,
            'prune': cmd_prune, 'restore': cmd_restore}


def main():
    parser = make_parser(__doc__)
    sub = parser.add_subparsers(dest='command', required=True,
                                metavar='COMMAND')

    def command(name, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != 'copy-task':
            p.add_argument('bank', help='task bank folder')
        return p

    p = command('list', 'tasks with sizes, kept versions, type, modulator, '
                'creation time and metrics (from the manifest)')
    p.add_argument('--json', action='store_true', help='print JSON')
    p = command('info', 'one task: its info and every kept version')
    p.add_argument('task')
    p.add_argument('--json', action='store_true', help='print JSON')
    p = command('verify', 'check every file against the manifest (size, '
                'sha256, fingerprint); exit 2 on any problem; list '
                'leftover files')
    p.add_argument('--json', action='store_true', help='print JSON')
    p = command('remove', 'remove a task with all its kept versions (one '
                'atomic commit)')
    p.add_argument('task')
    p = command('copy-task', 'copy a task\'s current version to another '
                'bank of the same filter bank (same fingerprint)')
    p.add_argument('src', help='source bank folder')
    p.add_argument('dst', help='destination bank folder')
    p.add_argument('task')
    p.add_argument('--replace', action='store_true', help='replace the '
                   'task if the destination holds it (its version is kept)')
    p = command('prune', 'delete the files the manifest does not name '
                '(left by interrupted writes)')
    p.add_argument('--dry-run', action='store_true',
                   help='only list them')
    p = command('restore', 'make a kept previous version of a task current '
                'again (the current one is kept; restore undoes itself)')
    p.add_argument('task')
    p.add_argument('--version', type=_version, default=None,
                   help='the version to restore: an index as "info" lists '
                   'it (1 = the version the current one replaced, the '
                   'default) or at least 4 hex digits of its sha256 (the '
                   '<sha8> of its file name)')
    args = parser.parse_args()

    from rc_adapter.core import bank as lib
    # Bank warnings (leftover files ...) as one line each, no source line.
    warnings.formatwarning = lambda message, *_a, **_k: f'warning: {message}\n'
    return COMMANDS[args.command](args, lib)


if __name__ == '__main__':
    run(main, interrupted='every change to a bank is one atomic commit: it '
        'happened completely or not at all (tools/bank.py list shows which)')
