"""GPU check: what would break or drift on a GPU, in about three minutes. Prints a pass/fail table, then one JSON line
per throughput (tokens/s, docs/s, img/s). Exit status 0 when every check passes (or is n/a), 1 otherwise.

    python -m bench.gpu_check                  # on CUDA; without a CUDA device it prints "no CUDA device: skipped"
    python -m bench.gpu_check --device cpu     # the same checks on the CPU, to exercise their logic anywhere
    python -m bench.gpu_check --device cpu --small --only lm,parity   # the reduced run the test suite uses

Checks (all through documented APIs: torch.autocast, torch.amp.GradScaler, channels_last, a warnings filter):
  lm_fp32/lm_fp16/lm_bf16  a `paper`-size AWD-LSTM LM (vocab 60k) trains 3 steps through the Learner: every loss is
                           finite, the first fp16 step is not skipped by the GradScaler, and cuDNN's "weights are not
                           part of single contiguous chunk" UserWarning is turned into an error
  parity_eval              AWD-LSTM eval logits on the device against the CPU, fp32, max abs diff <= 1e-5
  parity_weight_dropout    WeightDropout's training path (the flat-buffer kernel call) against nn.LSTM given the same
                           dropped weight, on the device, <= 1e-5
  pretrain_resume          `pretrain --preset tiny --precision fp16` stops mid-epoch with a checkpoint, `--resume`
                           continues on the same device (optimizer state and loss scale follow the model)
  clas_fp16                a `paper`-size classifier: 2 fp16 training steps (finite losses; skipped steps counted),
                           then `TextClassifier.predict` on a short, a long and a tiny text
  xresnet_fp16/_bf16       xresnet50 steps with channels_last: finite losses, NHWC weights kept, skipped fp16 steps
                           counted
  ddp_torchrun             with 2+ GPUs: torchrun --nproc_per_node=2 -m ulmfit pretrain --preset tiny --dry-run true

On the CPU (`--device cpu`) the same code runs with CPU-sized batches (the model sizes stay `paper`'s unless
--small): fp16/bf16 use CPU autocast and a CPU GradScaler, with an 8k vocab for the reduced-precision LM and
classifier because most CPUs emulate fp16/bf16 matmuls (~20x slower at 60k); the LSTMs themselves run in fp32 where
oneDNN lacks that dtype (awd_lstm.lstm_in_fp32); the cuDNN warning filter is installed but cuDNN is not involved;
parity_eval compares the CPU with itself (it checks the plumbing, not cuDNN); ddp_torchrun runs two gloo processes
on the CPU. Throughput numbers on a CPU are for the record only.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from common.events import Callback  # noqa: E402

CUDNN_CHUNK_WARNING = 'RNN module weights are not part of single contiguous chunk'
CHECKS = ('lm', 'parity', 'pretrain', 'clas', 'xresnet', 'ddp')


@contextmanager
def strict_rnn_weights():
    "cuDNN's non-contiguous-weights UserWarning becomes an error (the weights would be copied at every call)."
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message=CUDNN_CHUNK_WARNING, category=UserWarning)
        yield


@contextmanager
def no_tf32():
    "Plain fp32 matmuls and cuDNN kernels for the parity checks (TF32 alone differs by ~1e-3)."
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class StepLog(Callback):
    "Records each training batch's loss, wall time and the GradScaler's count of skipped steps so far."

    order = 95

    def __init__(self, device):
        self.dev, self.losses, self.times, self.skipped = device, [], [], []

    def before_batch(self):
        sync(self.dev)
        self.t0 = time.perf_counter()

    def after_batch(self):
        if not self.learn.training:
            return
        sync(self.dev)
        self.times.append(time.perf_counter() - self.t0)
        self.losses.append(float(self.learn.loss.detach()))
        self.skipped.append(getattr(getattr(self.learn, 'mixed_precision', None), 'n_skipped', 0))


# ---- the checks: each returns (ok, detail, [json records]) ---------------------------------------------------
def lm_config(a, precision='fp32'):
    "The `paper` AWD-LSTM at a 60k vocab (a CPU's emulated fp16/bf16 runs an 8k one); `tiny` at 500 with --small."
    from ulmfit.awd_lstm import AWDLSTMConfig

    if a.small:
        return AWDLSTMConfig.preset('tiny', vocab_sz=500)
    return AWDLSTMConfig.preset('paper', vocab_sz=8000 if a.cpu and precision != 'fp32' else 60000)


def check_lm(a, device, precision):
    from common.learner import DataLoaders
    from ulmfit.recipe import lm_learner

    torch.manual_seed(0)
    bs, bptt = a.lm_bs, a.lm_bptt
    cfg = lm_config(a, precision)
    batches = [(x[:, :-1], x[:, 1:]) for x in torch.randint(2, cfg.vocab_sz, (3, bs, bptt + 1))]
    log = StepLog(device)
    learn = lm_learner(cfg, DataLoaders(batches), lr=1e-3, clip=0.1, precision=precision, cbs=[log])
    learn.remove_cbs([learn.progress])
    learn.device.device = device  # the DeviceCallback
    with strict_rnn_weights():
        learn.fit(1)
    ok = len(log.losses) == 3 and all(math.isfinite(v) for v in log.losses)
    detail = 'losses ' + ' '.join(f'{v:.3f}' for v in log.losses)
    if precision == 'fp16':
        first_skipped = log.skipped[0] > 0
        ok &= not first_skipped
        scale = learn.mixed_precision.scaler.get_scale()
        detail += f"; first step {'SKIPPED' if first_skipped else 'taken'}, scale {scale:g}"
    t = sum(log.times[1:])
    rec = dict(
        bench='gpu_check_lm',
        precision=precision,
        tokens_per_s=round(bs * bptt * (len(log.times) - 1) / t, 1),
        bs=bs,
        bptt=bptt,
        vocab=cfg.vocab_sz,
        emb_sz=cfg.emb_sz,
        n_hid=cfg.n_hid,
    )
    return ok, detail, [rec]


def check_parity_eval(a, device):
    from ulmfit.awd_lstm import get_language_model, reset_model

    torch.manual_seed(0)
    m = get_language_model(lm_config(a)).eval()
    x = torch.randint(2, m[0].embed.emb.num_embeddings, (4, 30))
    with torch.no_grad(), no_tf32():
        reset_model(m)
        ref = m(x)[0]
        md = m.to(device)
        reset_model(md)
        got = md(x.to(device))[0].cpu()
    diff = (got - ref).abs().max().item()
    return diff <= 1e-5, f'max |device - cpu| = {diff:.2e} (logits up to {ref.abs().max().item():.2f})', []


def check_parity_weight_dropout(a, device):
    import copy

    from ulmfit.awd_lstm import WeightDropout

    torch.manual_seed(0)
    ni, nh = (32, 64) if a.small else (400, 1152)
    wd = WeightDropout(nn.LSTM(ni, nh, batch_first=True), 0.5).to(device).train()
    x = torch.randn(4, 20, ni, device=device)
    h = (torch.zeros(1, 4, nh, device=device), torch.zeros(1, 4, nh, device=device))
    with torch.no_grad(), no_tf32(), strict_rnn_weights():
        torch.manual_seed(1)
        out, _ = wd(x, h)
        torch.manual_seed(1)  # the same mask again, then the same weights through a plain nn.LSTM
        w = F.dropout(wd.module.weight_hh_l0, 0.5, training=True)
        ref_lstm = copy.deepcopy(wd.module)
        ref_lstm.weight_hh_l0.copy_(w)
        ref_lstm.flatten_parameters()
        ref, _ = ref_lstm(x, h)
    diff = (out - ref).abs().max().item()
    return diff <= 1e-5, f'max |train path - nn.LSTM| = {diff:.2e}', []


def write_corpus(path, n_docs, seed):
    import random

    rnd = random.Random(seed)
    words = 'the cat dog sat on a mat and ran to house tree sun moon big small red blue'.split()
    docs = [
        '\n'.join(' '.join(rnd.choice(words) for _ in range(rnd.randint(8, 20))).capitalize() + '.' for _ in range(3))
        for _ in range(n_docs)
    ]
    path.write_text('\n\n'.join(docs) + '\n')
    return path


def _env(device, tmp):
    env = {**os.environ, 'ULMFIT_DATA': str(tmp / 'data'), 'PYTHONPATH': str(ROOT)}
    if device.type == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''  # the entry points take CUDA whenever they see it
    return env


def _run(cmd, env, timeout=300):
    "(return code, all output, the line that says how it ended: stdout's last on success, stderr's otherwise)."
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in (p.stdout if p.returncode == 0 else p.stderr or p.stdout).splitlines() if ln.strip()]
    return p.returncode, p.stdout + p.stderr, lines[-1][:100] if lines else ""


def check_pretrain_resume(a, device):
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus, valid = write_corpus(tmp / 'train.txt', 80, 0), write_corpus(tmp / 'valid.txt', 6, 1)
        base = [sys.executable, '-m', 'ulmfit', 'pretrain']
        # A tiny time budget stops training after the first batch with a mid-epoch checkpoint.
        first = base + [
            '--preset',
            'tiny',
            '--precision',
            'fp16',
            '--corpus',
            str(corpus),
            '--valid',
            str(valid),
            '--max-docs',
            '0',
            '--min-freq',
            '1',
            '--bs',
            '4',
            '--bptt',
            '8',
            '--epochs',
            '2',
            '--max-minutes',
            '0.0005',
            '--n-workers',
            '1',
            '--runs',
            str(tmp / 'runs'),
            '--name',
            'gc',
        ]
        rc, out, last = _run(first, _env(device, tmp))
        ck = tmp / 'runs' / 'gc' / 'checkpoints' / 'last.pth'
        if rc != 0 or not ck.exists():
            return False, f'first run: rc {rc}: {last}', []
        rc, out, last = _run(base + ['--resume', str(tmp / 'runs' / 'gc')], _env(device, tmp))
        resumed = 'resuming from' in out and (tmp / 'runs' / 'gc' / 'metrics.json').exists()
        return rc == 0 and resumed, f'resume: rc {rc}; {last}', []


def check_clas(a, device):
    from common.learner import DataLoaders
    from ulmfit import recipe
    from ulmfit.api import TextClassifier
    from ulmfit.loaders import pad_collate
    from ulmfit.vocab import SPECIALS, Vocab

    torch.manual_seed(0)
    cfg = lm_config(a, 'fp16')
    itos = SPECIALS + [f'w{i}' for i in range(cfg.vocab_sz - len(SPECIALS))]
    cfg.vocab_sz = len(itos)
    g = torch.Generator().manual_seed(0)
    lo, hi = (10, 60) if a.small or device.type == 'cpu' else (50, 600)  # IMDB reviews: ~270 tokens on average
    docs = [
        torch.randint(len(SPECIALS), len(itos), (int(n),), generator=g).numpy()
        for n in torch.randint(lo, hi, (2 * a.clas_bs,), generator=g)
    ]
    batches = [
        pad_collate([(d, i % 2) for i, d in enumerate(docs[k : k + a.clas_bs])], pad_idx=1) for k in (0, a.clas_bs)
    ]
    log = StepLog(device)
    learn = recipe.clas_learner(cfg, 2, DataLoaders(batches), precision='fp16', cbs=[log])
    learn.remove_cbs([learn.progress])
    learn.device.device = device
    learn.freeze_to(0)
    with strict_rnn_weights():
        learn.fit(1, lr=1e-3)
        clf = TextClassifier(config=cfg, itos=itos, precision='fp16', verbose=False)
        clf.model, clf.vocab, clf.classes = learn.model.eval(), Vocab(itos), ['neg', 'pos']
        preds = clf.predict(['w1 w2 w3 w4 w5', 'w9 ' * 300, 'w7 w8'])
    # Skipped fp16 steps are counted, not failed: the head's first gradients at the starting scale (2**16) may
    # overflow, and the GradScaler skipping them while the scale settles is its documented behaviour.
    ok = (
        len(log.losses) == 2
        and all(math.isfinite(v) for v in log.losses)
        and all(p.label in ('neg', 'pos') and abs(sum(p.probs.values()) - 1) < 1e-3 for p in preds)
    )
    t = sum(log.times)
    rec = dict(
        bench='gpu_check_clas',
        precision='fp16',
        docs_per_s=round(2 * a.clas_bs / t, 1),
        bs=a.clas_bs,
        doc_len=[lo, hi],
        vocab=cfg.vocab_sz,
        emb_sz=cfg.emb_sz,
        n_hid=cfg.n_hid,
    )
    detail = (
        'losses '
        + ' '.join(f'{v:.3f}' for v in log.losses)
        + f'; {log.skipped[-1]} of 2 steps skipped'
        + f'; predict: {[p.label for p in preds]}'
    )
    return ok, detail, [rec]


def check_xresnet(a, device, precision):
    from common.learner import DataLoaders, Learner
    from vision.xresnet import create_model

    torch.manual_seed(0)
    model = create_model('xresnet18' if a.small else 'xresnet50', n_out=10).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    batches = [
        (
            torch.randn(a.img_bs, 3, a.img_size, a.img_size, generator=g).contiguous(memory_format=torch.channels_last),
            torch.randint(0, 10, (a.img_bs,), generator=g),
        )
        for _ in range(3)
    ]
    log = StepLog(device)
    learn = Learner(
        model,
        DataLoaders(batches),
        F.cross_entropy,
        lr=1e-3,
        precision=precision,
        device=device,
        progress=False,
        cbs=[log],
    )
    learn.fit(1)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    nhwc = conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Skipped fp16 steps are allowed here: a CNN's first gradients at the GradScaler's starting scale (2**16) may
    # overflow, and skipping them while the scale settles is the documented behaviour; the count is reported.
    ok = all(math.isfinite(v) for v in log.losses) and nhwc
    rec = dict(
        bench='gpu_check_xresnet',
        model='xresnet18' if a.small else 'xresnet50',
        precision=precision,
        img_per_s=round(a.img_bs * (len(log.times) - 1) / sum(log.times[1:]), 1),
        bs=a.img_bs,
        size=a.img_size,
        channels_last=True,
    )
    detail = 'losses ' + ' '.join(f'{v:.3f}' for v in log.losses) + f"; weights {'NHWC' if nhwc else 'NCHW!'}"
    if precision == 'fp16':
        detail += f'; {log.skipped[-1]} of 3 steps skipped'
    return ok, detail, [rec]


def check_ddp(a, device):
    n_gpu = torch.cuda.device_count() if device.type == 'cuda' else 0
    if device.type == 'cuda' and n_gpu < 2:
        return None, f'n/a: {n_gpu} GPU', []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus, valid = write_corpus(tmp / 'train.txt', 60, 0), write_corpus(tmp / 'valid.txt', 6, 1)
        cmd = [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--standalone',
            '--nproc_per_node=2',
            '-m',
            'ulmfit',
            'pretrain',
            '--preset',
            'tiny',
            '--dry-run',
            'true',
            '--corpus',
            str(corpus),
            '--valid',
            str(valid),
            '--max-docs',
            '0',
            '--min-freq',
            '1',
            '--bs',
            '4',
            '--bptt',
            '8',
            '--n-workers',
            '1',
            '--runs',
            str(tmp / 'runs'),
        ]
        rc, _, last = _run(cmd, _env(device, tmp))
        return rc == 0, f"rc {rc} ({'gloo, CPU' if device.type == 'cpu' else 'nccl'}); {last}", []


def run_checks(a, device):
    "[(name, ok or None for n/a, detail, seconds)], [json records]."
    plan = []
    if 'lm' in a.only:
        plan += [(f'lm_{p}', lambda p=p: check_lm(a, device, p)) for p in ('fp32', 'fp16', 'bf16')]
    if 'parity' in a.only:
        plan += [
            ('parity_eval', lambda: check_parity_eval(a, device)),
            ('parity_weight_dropout', lambda: check_parity_weight_dropout(a, device)),
        ]
    if 'pretrain' in a.only:
        plan.append(('pretrain_resume', lambda: check_pretrain_resume(a, device)))
    if 'clas' in a.only:
        plan.append(('clas_fp16', lambda: check_clas(a, device)))
    if 'xresnet' in a.only:
        plan += [(f'xresnet_{p}', lambda p=p: check_xresnet(a, device, p)) for p in ('fp16', 'bf16')]
    if 'ddp' in a.only:
        plan.append(('ddp_torchrun', lambda: check_ddp(a, device)))
    rows, records = [], []
    for name, fn in plan:
        t = time.time()
        try:
            # A check that fails mid-batch leaves MixedPrecision's autocast entered: this context restores the
            # previous autocast state on exit (torch.autocast.__exit__), so the next check starts clean.
            with torch.autocast(device.type, enabled=False):
                ok, detail, recs = fn()
        except Exception as e:  # a failed check is a row in the table, and the next check still runs
            ok, detail, recs = False, f'{type(e).__name__}: {str(e).splitlines()[0][:110] if str(e) else ""}', []
        rows.append((name, ok, detail, time.time() - t))
        records += [dict(r, device=str(device)) for r in recs]
    return rows, records


def print_table(rows):
    print(f"{'check':<24}{'result':<8}{'s':>7}  detail")
    for name, ok, detail, s in rows:
        print(f"{name:<24}{'n/a' if ok is None else 'PASS' if ok else 'FAIL':<8}{s:>7.1f}  {detail}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--device', default='cuda', help="cuda (default), cuda:N or cpu")
    p.add_argument('--small', action='store_true', help='tiny models (the test suite uses this)')
    p.add_argument('--only', default=','.join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    a = p.parse_args(argv)
    a.only = set(a.only.split(','))
    unknown = a.only - set(CHECKS)
    if unknown:
        p.error(f"unknown checks {sorted(unknown)}; choose from {','.join(CHECKS)}")
    a.cpu = not a.device.startswith('cuda')
    gpu = not a.cpu and not a.small
    # Paper sizes on a GPU (pretrain `paper`: bs 256, bptt 80; IMDB classifier: bs 128; Imagewoof: 128 px, bs 64);
    # CPU-sized batches otherwise, so a CPU run takes about a minute.
    a.lm_bs, a.lm_bptt = (256, 80) if gpu else (4, 16)
    a.clas_bs = 128 if gpu else 4
    a.img_bs, a.img_size = (64, 128) if gpu else (2, 32)
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.device.startswith('cuda') and not torch.cuda.is_available():
        print('no CUDA device: skipped')
        return 0
    device = torch.device(a.device)
    t0 = time.time()
    rows, records = run_checks(a, device)
    print_table(rows)
    for r in records:
        print(json.dumps(r))
    failed = [r[0] for r in rows if r[1] is False]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
    print(
        f"{len(rows) - len(failed)}/{len(rows)} passed on {name} in {time.time() - t0:.0f} s "
        f"(torch {torch.__version__})" + (f"; FAILED: {', '.join(failed)}" if failed else '')
    )
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
