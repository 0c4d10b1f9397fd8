"""Warm start: a new task starts from a stored task's tensors instead of
the bank's base state.

The new task's backbone tensors (modulators, task norms and their running
statistics, per-task copies) are copied from the source task; its decode
head only where the two tasks have the same task type, tensor by tensor
where the shapes agree (a semseg head can start a human_parts head except
for its classifier). The source is read (verified) from the bank and
copied: the run never holds, trains or writes the source task, so a
warm-started task is as isolated as any other.

``init_from='auto'`` picks the source by the loss on the new task's own
training data after a few steps from each candidate (every stored task,
and the base state), all on the same batches; ``docs/bank.md``, "Warm
start", explains the choice.
"""
from __future__ import annotations

import copy
import math
import random
from typing import Any, Mapping, Optional

import numpy as np
import torch
from mmengine.dist import (broadcast, broadcast_object_list, get_world_size,
                           is_main_process)
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ... import core as rc
from ...core.bank import TaskBank
from ...core.errors import RCConfigError, UnknownTaskError

__all__ = ['AUTO', 'DEFAULT_SCORE_STEPS', 'DEFAULT_SCORE_BATCHES',
           'WARM_START_KEYS', 'check_init_from', 'warm_start_hook',
           'warm_start_tensors', 'head_task_type', 'WarmStartHook']

#: ``init_from`` value that scores every stored task and picks the best.
AUTO = 'auto'
#: Training steps from each candidate before it is scored.
DEFAULT_SCORE_STEPS = 5
#: Further training batches (not trained on) the score is the mean loss of.
DEFAULT_SCORE_BATCHES = 2
#: Keys of the config's ``warm_start`` dict.
WARM_START_KEYS = ('score_steps', 'score_batches', 'candidates')


def check_init_from(bank: TaskBank, task: str, init_from: Optional[str]
                    ) -> None:
    """Checks an ``init_from`` argument against the bank before a run.

    Raises:
        RCConfigError: not a string.
        UnknownTaskError: a task the bank does not hold.
    """
    if init_from is None or init_from == AUTO:
        return
    if not isinstance(init_from, str):
        raise RCConfigError(f'init_from must be a task name, {AUTO!r} or '
                            f'None, got {init_from!r}')
    if init_from not in bank.tasks():
        raise UnknownTaskError(
            f'--init-from {init_from!r}: the bank {bank.path} holds no such '
            f'task (it holds {bank.tasks()}; {AUTO!r} picks one)')


def warm_start_hook(bank: TaskBank, task: str, init_from: Optional[str],
                    settings: Optional[Mapping[str, Any]] = None
                    ) -> Optional['WarmStartHook']:
    """The hook that warm-starts ``task`` (None for ``init_from=None``),
    with every argument checked before the run starts.

    Args:
        bank: The bank the run trains into.
        task: The trained task.
        init_from: None, a stored task or :data:`AUTO`.
        settings: The config's ``warm_start`` dict (:data:`WARM_START_KEYS`).

    Raises:
        RCConfigError: a malformed ``init_from`` or ``warm_start``.
        UnknownTaskError: ``init_from`` or a candidate is not in the bank.
    """
    check_init_from(bank, task, init_from)
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(WARM_START_KEYS))
    if unknown:
        raise RCConfigError(f'warm_start: unknown key(s) {unknown}; known: '
                            f'{list(WARM_START_KEYS)}')
    if init_from is None:
        return None
    return WarmStartHook(
        bank, task, init_from,
        score_steps=settings.get('score_steps', DEFAULT_SCORE_STEPS),
        score_batches=settings.get('score_batches', DEFAULT_SCORE_BATCHES),
        candidates=settings.get('candidates'))


def _is_head(module_name: str) -> bool:
    return module_name == 'decode_heads' or \
        module_name.startswith('decode_heads.')


def head_task_type(model: torch.nn.Module, task: str) -> Optional[str]:
    """The task type (``segmentation``, ``depth`` ...) of ``task``'s built
    decode head, or None if the head does not say."""
    heads = getattr(model, 'decode_heads', None)
    if heads is None or not hasattr(heads, 'task_submodule'):
        return None
    return getattr(heads.task_submodule(task), 'task_type', None)


def warm_start_tensors(model: torch.nn.Module, task: str, source: str,
                       source_state: Mapping[str, torch.Tensor],
                       same_type: bool) -> tuple[dict, dict]:
    """The tensors of ``source`` (as stored) that initialise ``task``.

    Args:
        model: The model holding ``task`` (not ``source``).
        task: The new task.
        source: The stored task's name.
        source_state: Its tensors, keyed as ``task_state_dict`` keys them
            (with ``source`` in the key).
        same_type: The two decode heads have the same task type; otherwise
            no head tensor is taken.

    Returns:
        ``(tensors, counts)``: tensors keyed for ``task``; counts of
        ``backbone`` and ``head`` tensors taken and ``skipped`` ones (shape
        or name mismatch, or a head of another type).
    """
    taken, counts = {}, dict(backbone=0, head=0, skipped=0)
    target = rc.task_state_dict(model, task)
    for name, module in rc.task_modules(model):
        base = f'{name}.' if name else ''
        new = f'{base}{module.task_container}.{task}.'
        old = f'{base}{module.task_container}.{source}.'
        head = _is_head(name)
        for key, value in target.items():
            if not key.startswith(new):
                continue
            stored = source_state.get(old + key[len(new):])
            if stored is None or (head and not same_type) or \
                    tuple(stored.shape) != tuple(value.shape) or \
                    stored.dtype != value.dtype:
                counts['skipped'] += 1
                continue
            taken[key] = stored
            counts['head' if head else 'backbone'] += 1
    return taken, counts


def _load(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]
          ) -> None:
    """Copies ``tensors`` (keyed as in ``model.state_dict()``) in place."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)


def _rng_state() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state: tuple) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


class WarmStartHook(Hook):
    """Initialises the trained task from a stored task before training.

    Runs at ``before_train``, after the Runner has initialised the weights
    and resumed (a resumed run keeps its checkpoint's tensors: the hook
    does nothing). Under DDP rank 0 chooses and loads; the task's tensors
    and the record are then broadcast, so every rank starts identical.

    Args:
        bank: The bank holding the candidates.
        task: The task being trained.
        init_from: A stored task, or :data:`AUTO`.
        score_steps: Steps trained from each candidate (``AUTO``).
        score_batches: Batches the score averages over (``AUTO``).
        candidates: The stored tasks ``AUTO`` considers (None: all; the
            base state always).

    Attributes:
        record (dict | None): What :func:`train_task` stores as the task's
            ``init_from`` info, set at ``before_train``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, bank: TaskBank, task: str, init_from: str,
                 score_steps: int = DEFAULT_SCORE_STEPS,
                 score_batches: int = DEFAULT_SCORE_BATCHES,
                 candidates: Optional[list] = None) -> None:
        for key, value in (('score_steps', score_steps),
                           ('score_batches', score_batches)):
            if isinstance(value, bool) or not isinstance(value, int) or \
                    value < (0 if key == 'score_steps' else 1):
                raise RCConfigError(f'warm_start.{key} must be an integer '
                                    f'>= {0 if key == "score_steps" else 1},'
                                    f' got {value!r}')
        self.bank = bank
        self.task = task
        self.init_from = init_from
        self.score_steps = score_steps
        self.score_batches = score_batches
        if candidates is not None:
            if isinstance(candidates, str) or not all(
                    isinstance(c, str) for c in candidates):
                raise RCConfigError(f'warm_start.candidates must be a list '
                                    f'of task names, got {candidates!r}')
            unknown = sorted(set(candidates) - set(bank.tasks()))
            if unknown:
                raise UnknownTaskError(
                    f'warm_start.candidates: the bank {bank.path} holds no '
                    f'task(s) {unknown} (it holds {bank.tasks()})')
            candidates = list(candidates)
        self.candidates = candidates
        self.record: Optional[dict] = None

    def before_train(self, runner) -> None:
        if getattr(runner, '_has_loaded', False):
            self.record = dict(task=None, resumed=True,
                               requested=self.init_from)
            return
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        record = [None]
        if is_main_process():
            record[0] = self._start(runner, model)
        if get_world_size() > 1:
            broadcast_object_list(record)
            for value in rc.task_state_dict(model, self.task).values():
                broadcast(value)
        self.record = record[0]
        runner.logger.info(f'warm start of {self.task!r}: {self.record}')

    # -- choosing and loading ---------------------------------------------
    def _read(self, model: torch.nn.Module, source: str
              ) -> tuple[dict, dict, dict]:
        """A candidate's tensors for the new task, its version and the
        counts (see :func:`warm_start_tensors`)."""
        with self.bank.open_task(source) as (stored, version):
            same = head_task_type(model, self.task)
            same = same is not None and \
                version['info'].get('type') == same
            tensors, counts = warm_start_tensors(model, self.task, source,
                                                 stored, same)
            tensors = {k: v.clone() for k, v in tensors.items()}
        return tensors, version, counts

    def _start(self, runner, model: torch.nn.Module) -> dict:
        scores = None
        if self.init_from == AUTO:
            stored = self.bank.tasks()
            candidates = [None] + [t for t in stored if self.candidates is
                                   None or t in self.candidates]
            scores = self._scores(runner, model, candidates)
            best = min(scores, key=lambda k: scores[k])
            source = None if best == 'base' else best
        else:
            source = self.init_from
        record: dict[str, Any] = dict(task=source, requested=self.init_from)
        if source is not None:
            tensors, version, counts = self._read(model, source)
            _load(model, tensors)
            record.update(sha256=version['sha256'],
                          version=version['version'], **counts)
        if scores is not None:
            record.update(scores=scores, score=(
                f'mean training loss on {self.score_batches} batch(es) '
                f'after {self.score_steps} step(s) from each candidate'))
        return record

    def _scores(self, runner, model: torch.nn.Module,
                candidates: list) -> dict[str, float]:
        """Mean loss on held-out training batches after ``score_steps``
        steps from each candidate (None = the base state); the model's
        task tensors and the random state are restored afterwards."""
        rng = _rng_state()
        try:
            batches = self._batches(runner.train_loop.dataloader)
        finally:
            _set_rng_state(rng)
        steps, held = batches[:self.score_steps], \
            batches[self.score_steps:]
        start = {k: v.detach().clone() for k, v in
                 rc.task_state_dict(model, self.task).items()}
        scores = {}
        was_training = model.training
        try:
            for source in candidates:
                _load(model, start)
                if source is not None:
                    _load(model, self._read(model, source)[0])
                scores[source or 'base'] = self._score(runner, model, steps,
                                                       held)
        finally:
            _load(model, start)
            model.train(was_training)
            _set_rng_state(rng)
        return scores

    def _batches(self, loader: torch.utils.data.DataLoader) -> list:
        """``score_steps + score_batches`` training batches, the same for
        every candidate: a fixed (seeded) order of the training set,
        through the run's pipeline and collate function, in this process.
        The run's own sampler is not touched, so training then sees the
        batches it would have seen without the warm start."""
        size = loader.batch_size or 1
        needed = (self.score_steps + self.score_batches) * size
        count = len(loader.dataset)
        if count == 0:
            raise RCConfigError(f'warm start of {self.task!r}: the training '
                                f'set is empty')
        order = torch.randperm(count, generator=torch.Generator()
                               .manual_seed(0)).tolist()
        indices = (order * (needed // count + 1))[:needed]
        scoring = torch.utils.data.DataLoader(
            loader.dataset, batch_size=size, sampler=indices,
            collate_fn=loader.collate_fn, num_workers=0)
        return list(scoring)

    def _score(self, runner, model: torch.nn.Module, steps: list,
               held: list) -> float:
        # A fresh optimizer as configured (no momentum carried over).
        wrapper = runner.build_optim_wrapper(
            copy.deepcopy(runner.cfg.optim_wrapper))
        model.train()
        for batch in steps:
            model.train_step(batch, wrapper)
        wrapper.zero_grad()
        losses = []
        with torch.no_grad():
            for batch in held:
                data = model.data_preprocessor(batch, True)
                loss, _ = model.parse_losses(model(**data, mode='loss'))
                losses.append(float(loss))
        score = sum(losses) / len(losses)
        return score if math.isfinite(score) else math.inf
