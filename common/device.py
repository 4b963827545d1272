"The device: where the model and every batch live."

import torch

from .events import Callback


def default_device():
    "CUDA if available, then Apple's MPS, else CPU."
    if torch.cuda.is_available():
        return torch.device('cuda')
    if getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
        return torch.device('mps')
    return torch.device('cpu')


def to_device(b, device, non_blocking=False):
    "Move a tensor, or a tuple/list/dict of them, to `device`."
    if isinstance(b, torch.Tensor):
        return b.to(device, non_blocking=non_blocking)
    if isinstance(b, (list, tuple)):
        return type(b)(to_device(o, device, non_blocking) for o in b)
    if isinstance(b, dict):
        return {k: to_device(v, device, non_blocking) for k, v in b.items()}
    return b


class DeviceCallback(Callback):
    "Puts the model and every batch on `device` (default: CUDA when available)."

    order = -20

    def __init__(self, device=None):
        self.device = torch.device(device) if device is not None else default_device()

    def before_fit(self):
        self.learn.model.to(self.device)

    before_validate = before_fit

    def before_batch(self):
        nb = self.device.type == 'cuda'
        self.learn.xb, self.learn.yb = to_device((self.learn.xb, self.learn.yb), self.device, nb)
