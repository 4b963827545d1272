"xresnet: every registered variant runs forward and backward, and the Bag-of-Tricks details are in place."

from dataclasses import asdict

import pytest
import torch
from torch import nn

from common.optim import check_split
from vision.xresnet import (
    BN_TYPES,
    AdaptiveConcatPool2d,
    ResBlock,
    XResNetConfig,
    bn_splitter,
    body,
    create_model,
    head,
    list_models,
    make_head,
    model_from_dict,
    set_head,
    splitter,
    xresnet,
)

# Narrow widths keep the deep variants fast; depth, expansion and wiring are what these tests are about.
SMALL = dict(n_out=3, width=0.125)


def test_registry_lists_the_five_variants():
    assert list_models() == ['xresnet18', 'xresnet34', 'xresnet50', 'xresnet101', 'xresnet152']
    with pytest.raises(KeyError, match='xresnet18'):
        create_model('xresnet19')


@pytest.mark.parametrize('name', list_models())
def test_forward_backward_every_param_gets_a_gradient(name):
    torch.manual_seed(0)
    m = create_model(name, **SMALL)
    # With gamma = 0 at the end of each branch the convs before it get exactly-zero gradients; set gamma to 1
    # so a missing connection shows up as a zero gradient.
    for mod in m.modules():
        if isinstance(mod, BN_TYPES):
            nn.init.ones_(mod.weight)
    out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    out.pow(2).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert p.grad.abs().sum() > 0, n


@pytest.mark.parametrize('name,n_params', [('xresnet18', 11_181_642), ('xresnet50', 23_528_522)])
def test_full_width_parameter_counts(name, n_params):
    "ResNet-18/50 have 11.2M/23.5M parameters with 10 outputs; the C and D tweaks add a little."
    m = create_model(name, n_out=10)
    n = sum(p.numel() for p in m.parameters())
    assert n_params <= n <= n_params * 1.01


def test_last_bn_of_each_residual_branch_starts_at_zero():
    m = create_model('xresnet50', **SMALL)
    blocks = [b for b in m.modules() if isinstance(b, ResBlock)]
    assert len(blocks) == 16
    last_bns = {id(b.convs[-1][1]) for b in blocks}
    for b in blocks:
        assert torch.all(b.convs[-1][1].weight == 0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d) and id(mod) not in last_bns:
            assert torch.all(mod.weight == 1)


@pytest.mark.parametrize('c_in', [1, 3, 4])
def test_stem_widths_follow_c_in(c_in):
    m = create_model('xresnet18', c_in=c_in, n_out=2)
    stem = [body(m)[i][0] for i in range(3)]
    assert [(c.in_channels, c.out_channels) for c in stem] == [(c_in, (c_in + 1) * 8), ((c_in + 1) * 8, 32), (32, 64)]
    assert [c.stride for c in stem] == [(2, 2), (1, 1), (1, 1)]
    assert m(torch.randn(2, c_in, 32, 32)).shape == (2, 2)


def test_resnet_b_and_d_downsampling():
    "Stride on the 3x3 conv of a bottleneck; the identity path average-pools before its 1x1 conv."
    m = create_model('xresnet50', **SMALL)
    down = body(m)[5][0]  # first block of stage 2
    assert [c[0].stride for c in down.convs] == [(1, 1), (2, 2), (1, 1)]
    assert [c[0].kernel_size for c in down.convs] == [(1, 1), (3, 3), (1, 1)]
    assert isinstance(down.pool, nn.AvgPool2d) and down.idconv[0].kernel_size == (1, 1)
    assert down.idconv[0].stride == (1, 1)
    assert isinstance(body(m)[5][1].pool, nn.Identity) and isinstance(body(m)[5][1].idconv, nn.Identity)


def test_kaiming_init_scale():
    torch.manual_seed(0)
    conv = body(create_model('xresnet18', n_out=2))[6][0].convs[0][0]
    fan_in = conv.in_channels * 9
    assert abs(conv.weight.std().item() - (2 / fan_in) ** 0.5) < 0.05 * (2 / fan_in) ** 0.5


def test_concat_pool_is_max_then_avg():
    x = torch.randn(2, 5, 4, 4)
    out = AdaptiveConcatPool2d()(x)
    assert out.shape == (2, 10, 1, 1)
    assert torch.allclose(out[:, :5, 0, 0], x.amax((2, 3))) and torch.allclose(out[:, 5:, 0, 0], x.mean((2, 3)))


def test_interface_body_head_and_swap():
    m = create_model('xresnet18', **SMALL)
    feats = body(m)(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 64, 2, 2)  # width 0.125: 512 * 0.125 channels, stride 32
    assert head(m)(feats).shape == (2, 3)
    set_head(m, make_head(64, 7, concat_pool=True))
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert isinstance(m[:-1][0], nn.Sequential)  # plain nn.Sequential: slicing works


def test_splitters_cover_every_parameter_once():
    m = create_model('xresnet34', **SMALL)
    for split in (splitter, bn_splitter):
        groups = split(m)
        assert len(groups) == 4
        check_split(m, groups)
    bn_ids = {id(p) for mod in m.modules() if isinstance(mod, BN_TYPES) for p in mod.parameters()}
    first3 = [id(p) for g in bn_splitter(m)[:3] for p in g]
    assert not bn_ids & set(first3)  # every BN is in the last (head) group
    assert bn_ids <= {id(p) for p in bn_splitter(m)[-1]}
    assert {id(p) for p in splitter(m)[-1]} == {id(p) for p in head(m).parameters()}


def test_rebuild_from_config_dict():
    m = create_model('xresnet50', **SMALL).eval()
    m2 = model_from_dict(asdict(m.config)).eval()
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), m2(x))


def test_a_stage_of_zero_blocks_is_empty():
    model = xresnet(XResNetConfig(layers=(0, 1, 1, 1), width=0.25, n_out=3))
    stages = [m for m in model[0] if isinstance(m, nn.Sequential)][-4:]
    assert [len(s) for s in stages] == [0, 1, 1, 1]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
