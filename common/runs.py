"""Run folders: every training entry point writes to `runs/<name>/`, never over an existing one.

runs/<name>/config.json      the resolved config
           metrics.jsonl     one line per epoch (with the stage that produced it)
           metrics.json      final figures
           plots/*.png       losses, schedules, metric curves
           checkpoints/      checkpoint files (resume from `last.pth`)
"""

import contextlib
import json
import time
from pathlib import Path

from .checkpoint import atomic_write, atomic_write_json
from .config import config_to_json
from .distributed import rank
from .events import Callback
from .plots import plot_losses, plot_metrics, plot_sched
from .schedule import lr_finding


def new_run_dir(name, root='runs'):
    "A fresh folder `root/name`, or `root/name-2`, `-3`, ... if taken (rank 0 creates it)."
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        d = root / (name if i == 1 else f'{name}-{i}')
        with contextlib.suppress(FileExistsError):  # taken: try the next name
            d.mkdir()
            (d / 'plots').mkdir()
            (d / 'checkpoints').mkdir()
            return d
    raise RuntimeError(f"no free run folder name for {name!r} under {root}")


def write_json(path, obj):
    "Write JSON atomically (rank 0 only)."
    return atomic_write_json(path, obj, indent=2) if rank() == 0 else path


def write_config(run_dir, cfg):
    if rank() == 0:
        atomic_write(Path(run_dir) / 'config.json', lambda f: f.write(config_to_json(cfg).encode()))


class RunLogger(Callback):
    "Appends each epoch's figures to metrics.jsonl and writes loss/schedule/metric plots after each fit."

    order = 65

    def __init__(self, run_dir, stage='train'):
        self.run_dir, self.stage, self.n_fits = Path(run_dir), stage, 0

    def before_fit(self):
        if not lr_finding(self.learn):
            self.n_fits += 1
            resume = getattr(self.learn, 'resume', None)  # a Resume callback, which has loaded the checkpoint
            if resume is not None and rank() == 0:
                self._keep_rows_upto(resume.epoch)

    def _keep_rows_upto(self, n_epochs):
        "On resume, drop this stage's rows past the checkpoint's epochs: a kill can fall between row and checkpoint."
        f = self.run_dir / 'metrics.jsonl'
        if not f.exists():
            return
        lines = f.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a row torn by the kill
                continue
            if row.get('stage') != self.tag or row.get('epoch', 0) <= n_epochs:
                keep.append(line if line.endswith('\n') else line + '\n')
        if keep != lines:
            atomic_write(f, lambda fh: fh.write(''.join(keep).encode()))

    @property
    def tag(self):
        "The stage name, numbered from its second fit on (`clas`, `clas-2`, ...): each fit keeps its plots."
        return self.stage if self.n_fits <= 1 else f'{self.stage}-{self.n_fits}'

    def after_epoch(self):
        if rank() != 0 or lr_finding(self.learn) or not self.learn.recorder.history:
            return
        row = {'stage': self.tag, **self.learn.recorder.history[-1], 'time': time.strftime('%Y-%m-%dT%H:%M:%S')}
        with open(self.run_dir / 'metrics.jsonl', 'a') as f:
            f.write(json.dumps(row) + '\n')

    def after_fit(self):
        if rank() != 0 or lr_finding(self.learn):
            return
        r = self.learn.recorder
        plots = self.run_dir / 'plots'
        if r.losses:
            plot_losses(r, plots / f'{self.tag}_loss.png')
            plot_sched(r, plots / f'{self.tag}_sched.png')
        if r.history:
            plot_metrics(r.history, plots / f'{self.tag}_metrics.png')
