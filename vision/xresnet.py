"""XResNet: ResNet with the "Bag of Tricks" tweaks (He et al. 2019, https://arxiv.org/abs/1812.01187).

    ResNet-C  stem = three 3x3 convs, widths (c_in+1)*8, 32, 64, the first with stride 2
    ResNet-B  a downsampling block puts its stride on the 3x3 conv, not on the first 1x1
    ResNet-D  the identity path downsamples with a 2x2 average pool before its 1x1 conv
    plus      the last BatchNorm of every residual branch starts with gamma = 0, so each block starts as
              the identity and a deep network trains like a shallow one at first (Goyal et al. 2017)

Every model has the same interface: `model = nn.Sequential(body, head)`, so `model[0]` is the body (image ->
feature map) and `model[1]` is the head (feature map -> logits). `set_head` swaps the head; `splitter` and
`bn_splitter` give the layer groups for discriminative learning rates and `freeze_to`.
"""

from dataclasses import dataclass

import torch
from torch import nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class XResNetConfig:
    "Architecture of an xresnet. Depths from He et al. 2016 (Table 1); tweaks from He et al. 2019."

    expansion: int = 1  # 1: two 3x3 convs per block (18/34); 4: bottleneck 1x1-3x3-1x1 (50+)
    layers: tuple = (2, 2, 2, 2)  # blocks per stage
    c_in: int = 3  # input channels; the stem's first width follows it
    n_out: int = 1000  # classes
    width: float = 1.0  # multiplies every width after the first stem conv (1.0 = the paper)
    p: float = 0.0  # dropout before the final linear layer


def conv_layer(ni, nf, ks=3, stride=1, zero_bn=False, act=True):
    "conv -> BatchNorm (-> ReLU). `zero_bn` starts BN's gamma at 0 (end of a residual branch)."
    bn = nn.BatchNorm2d(nf)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    conv = nn.Conv2d(ni, nf, ks, stride=stride, padding=ks // 2, bias=False)
    return nn.Sequential(conv, bn, nn.ReLU(inplace=True)) if act else nn.Sequential(conv, bn)


class ResBlock(nn.Module):
    "relu(convs(x) + idconv(pool(x))): basic (expansion 1) or bottleneck (expansion 4) block."

    def __init__(self, expansion, ni, nh, stride=1):
        super().__init__()
        nf = nh * expansion
        if expansion == 1:
            layers = [conv_layer(ni, nh, 3, stride=stride), conv_layer(nh, nf, 3, zero_bn=True, act=False)]
        else:
            layers = [
                conv_layer(ni, nh, 1),
                conv_layer(nh, nh, 3, stride=stride),  # ResNet-B: the stride sits here
                conv_layer(nh, nf, 1, zero_bn=True, act=False),
            ]
        self.convs = nn.Sequential(*layers)
        # ResNet-D: average-pool first, so the 1x1 conv sees every pixel instead of one in four.
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride != 1 else nn.Identity()
        self.idconv = conv_layer(ni, nf, 1, act=False) if ni != nf else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.convs(x) + self.idconv(self.pool(x)))


class AdaptiveConcatPool2d(nn.Module):
    "Average pool and max pool to `size`, concatenated on channels: (bs, nf, h, w) -> (bs, 2*nf, size, size)."

    def __init__(self, size=1):
        super().__init__()
        self.ap, self.mp = nn.AdaptiveAvgPool2d(size), nn.AdaptiveMaxPool2d(size)

    def forward(self, x):
        return torch.cat([self.mp(x), self.ap(x)], dim=1)


def init_cnn(m):
    "Kaiming-normal init for convs and linears (He et al. 2015), zero biases; BN was set in `conv_layer`. Returns `m`."
    if getattr(m, 'bias', None) is not None and not isinstance(m, BN_TYPES):
        nn.init.zeros_(m.bias)
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight)
    for c in m.children():
        init_cnn(c)
    return m


def make_head(nf, n_out, concat_pool=False, p=0.0):
    "Pool -> flatten (-> dropout) -> linear. Concat pool doubles the features: (bs, nf, h, w) -> (bs, n_out)."
    pool = AdaptiveConcatPool2d(1) if concat_pool else nn.AdaptiveAvgPool2d(1)
    layers = [pool, nn.Flatten()] + ([nn.Dropout(p)] if p else [])
    layers.append(nn.Linear(nf * (2 if concat_pool else 1), n_out))
    return init_cnn(nn.Sequential(*layers))


def xresnet(cfg):
    "Build `nn.Sequential(body, head)` from a config."
    c = cfg.c_in
    w32, *nhs = [max(8, int(n * cfg.width)) for n in (32, 64, 128, 256, 512)]  # nhs: the four stages' widths
    stem_szs = [(c + 1) * 8, w32, nhs[0]]
    stem = [conv_layer(ni, nf, stride=2 if i == 0 else 1) for i, (ni, nf) in enumerate(zip([c] + stem_szs, stem_szs))]
    nis = [stem_szs[-1]] + [nh * cfg.expansion for nh in nhs[:-1]]
    stages = []
    for i, (ni, nh, n) in enumerate(zip(nis, nhs, cfg.layers)):
        # a stage's first block sets its width and, after the first stage, halves the resolution
        blocks = [
            ResBlock(cfg.expansion, nh * cfg.expansion if j else ni, nh, stride=2 if i and not j else 1)
            for j in range(n)
        ]
        stages.append(nn.Sequential(*blocks))
    body_ = init_cnn(nn.Sequential(*stem, nn.MaxPool2d(3, stride=2, padding=1), *stages))
    model = nn.Sequential(body_, make_head(nhs[-1] * cfg.expansion, cfg.n_out, p=cfg.p))
    model.config = cfg  # plain data, so a checkpoint can store `asdict(model.config)` and rebuild
    return model


# ---- registry: one line per variant ------------------------------------------------------------------------
_models = {}


def register(fn):
    "Make `fn` available to `create_model(fn.__name__, ...)`."
    _models[fn.__name__] = fn
    return fn


@register
def xresnet18(**kw):
    return xresnet(XResNetConfig(1, (2, 2, 2, 2), **kw))


@register
def xresnet34(**kw):
    return xresnet(XResNetConfig(1, (3, 4, 6, 3), **kw))


@register
def xresnet50(**kw):
    return xresnet(XResNetConfig(4, (3, 4, 6, 3), **kw))


@register
def xresnet101(**kw):
    return xresnet(XResNetConfig(4, (3, 4, 23, 3), **kw))


@register
def xresnet152(**kw):
    return xresnet(XResNetConfig(4, (3, 8, 36, 3), **kw))


def list_models():
    "Names of the registered variants."
    return sorted(_models, key=lambda n: int(n.removeprefix('xresnet')))


def create_model(name, **kw):
    "Build a registered variant by name, e.g. `create_model('xresnet50', n_out=10)`."
    if name not in _models:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _models[name](**kw)


def model_from_dict(d):
    "Rebuild a model from `asdict(XResNetConfig)` as stored in a checkpoint."
    return xresnet(XResNetConfig(**{**d, 'layers': tuple(d['layers'])}))


# ---- fixed interface ---------------------------------------------------------------------------------------
def body(model):
    return model[0]


def head(model):
    return model[1]


def set_head(model, new_head):
    "Replace the head in place and return the model."
    model[1] = new_head
    return model


def _body_chunks(model):
    "The body as three chunks: stem + first stage, stages 2-3, last stage."
    b = list(body(model).children())
    return [b[:5], b[5:7], b[7:]]  # [3 stem convs, maxpool, stage 1], [stage 2, 3], [stage 4]


def _params(mods, keep=lambda m: True):
    return [p for mod in mods for m in mod.modules() if keep(m) for p in m.parameters(recurse=False)]


def splitter(model):
    "Four layer groups, input to output: stem+stage 1, stages 2-3, stage 4, head."
    return [_params(c) for c in _body_chunks(model)] + [_params([head(model)])]


def bn_splitter(model):
    "Like `splitter`, but every BatchNorm of the body joins the head's group."
    # Freezing the body then leaves BN trainable, at the head's (largest) LR: its statistics and affine terms must
    # adapt to the new data set even when the convs stay frozen.
    chunks = _body_chunks(model)
    groups = [_params(c, keep=lambda m: not isinstance(m, BN_TYPES)) for c in chunks]
    return groups + [_params(sum(chunks, []), keep=lambda m: isinstance(m, BN_TYPES)) + _params([head(model)])]
