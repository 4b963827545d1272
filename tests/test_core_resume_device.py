"Resuming after the model moves: optimizer state follows the parameters, and the fp16 loss scale is restored."

import torch
from core_utils import synth_learner

from common.checkpoint import load_checkpoint
from common.events import Callback
from common.optim import opt_state_to_params
from common.precision import MixedPrecision
from common.stopping import CheckpointCallback


class ToDouble(Callback):
    "Stands in for DeviceCallback moving the model to a GPU: it changes where the parameters live (here: dtype)."

    order = -19

    def before_fit(self):
        self.learn.model.double()

    def before_batch(self):
        self.learn.xb, self.learn.yb = self.learn.xb.double(), self.learn.yb.double()


def test_opt_state_follows_parameters_after_resume(tmp_path):
    ck = tmp_path / 'last.pth'
    learn = synth_learner(cbs=[ToDouble()])
    learn.fit(1, cbs=[CheckpointCallback(ck)])
    learn2 = synth_learner(cbs=[ToDouble()])
    learn2.fit(2, resume=ck)  # before the fix: AdamW met float32 state beside float64 parameters
    for p, st in learn2.opt.state.items():
        for k, v in st.items():
            if k != 'step':
                assert v.dtype == p.dtype == torch.float64 and v.device == p.device, k


def test_opt_state_to_params_moves_only_stale_state():
    learn = synth_learner()
    learn.fit(1)
    assert not opt_state_to_params(learn.opt)
    learn.model.double()  # the parameters move, the state doesn't
    assert opt_state_to_params(learn.opt)
    assert all(v.dtype == torch.float64 for st in learn.opt.state.values() for k, v in st.items() if k != 'step')


def test_grad_scaler_state_is_restored_on_resume(tmp_path):
    ck = tmp_path / 'last.pth'
    learn = synth_learner(precision='fp16')
    learn.mixed_precision.init_scale = 2.0**10
    learn.fit(1, cbs=[CheckpointCallback(ck)])
    saved = load_checkpoint(ck)['train_state']['cbs']['mixed_precision']['scaler']
    learn.mixed_precision.scaler.update(2.0**3)  # what the live scaler holds is no longer what was saved
    learn2 = synth_learner(precision='fp16')  # a fresh process: its scaler would start at 2**16
    seen = []
    learn2.fit(2, resume=ck, cbs=[_Probe(seen)])
    assert seen == [saved['scale']]


def test_mixed_precision_keeps_scaler_state_until_the_scaler_exists():
    mp = MixedPrecision('fp16')
    mp.load_state_dict(
        {
            'scaler': {
                'scale': 512.0,
                'growth_factor': 2.0,
                'backoff_factor': 0.5,
                'growth_interval': 2000,
                '_growth_tracker': 7,
            }
        }
    )
    mp.learn = synth_learner()
    mp.before_fit()
    assert mp.scaler.get_scale() == 512.0 and mp.scaler._get_growth_tracker() == 7


class _Probe(Callback):
    "Records the loss scale the first training batch runs with."

    order = 11

    def __init__(self, seen):
        self.seen = seen

    def before_batch(self):
        if self.learn.training and not self.seen:
            self.seen.append(self.learn.mixed_precision.scaler.get_scale())
