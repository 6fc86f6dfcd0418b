import pytest
import torch
from torch import nn

from benchbd.models import MODELS, create_model
from benchbd.models.wrn import PreActBlock


def test_wrn16_1_size_and_split():
    net = create_model("wrn16_1", 10)
    assert sum(p.numel() for p in net.parameters()) == 175_626
    assert net.default_split == 5
    assert net.stem_shape(5) == (64, 8, 8)
    convs = [m for m in net.stem(5).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 11
    head_convs = [m for m in net.head(5).modules() if isinstance(m, nn.Conv2d)]
    assert len(head_convs) == 2


def test_wrn_decoder_matches_spec():
    dec = create_model("wrn16_1", 10).decoder(5)
    kinds = [type(m) for m in dec]
    assert kinds == [nn.ConvTranspose2d, nn.ReLU, nn.ConvTranspose2d, nn.Sigmoid]
    assert (dec[0].in_channels, dec[0].out_channels, dec[2].out_channels) == (64, 32, 3)
    assert dec(torch.rand(2, 64, 8, 8)).shape == (2, 3, 32, 32)


def test_width_changing_block_reads_raw_input():
    """The official quirk: bn1 + activation are computed but unused where widths differ."""
    block = PreActBlock(16, 32, 2).eval()
    x = torch.randn(2, 16, 8, 8)
    before = block(x)
    with torch.no_grad():
        block.bn1.weight.mul_(5)
        block.bn1.bias.add_(3)
    assert torch.equal(before, block(x))
    same = PreActBlock(16, 16, 1).eval()
    before = same(x)
    with torch.no_grad():
        same.bn1.bias.add_(3)
    assert not torch.allclose(before, same(x))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_is_stem_then_head(name):
    net = create_model(name, 7).eval()
    x = torch.rand(2, 3, net.input_size, net.input_size)
    split = net.default_split
    with torch.no_grad():
        assert torch.allclose(net(x), net.head(split)(net.stem(split)(x)), atol=1e-5)
        rec = net.decoder(split)(net.stem(split)(x))
    assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    assert net(x).shape == (2, 7)


def test_wrn_decoders_are_the_official_ones():
    """wideresnet_ae.py: split 4 (32x16x16) ConvT(32->32, k4, s2), ReLU, ConvT(32->3, k3, s1), Sigmoid;
    splits 5 and 6 (64x8x8) ConvT(64->32, k4, s2), ReLU, ConvT(32->3, k4, s2), Sigmoid."""
    net = create_model("wrn16_1", 10)
    layout = {
        split: [
            (
                type(m).__name__,
                getattr(m, "in_channels", None),
                getattr(m, "out_channels", None),
                getattr(m, "kernel_size", None),
                getattr(m, "stride", None),
            )
            for m in net.decoder(split)
        ]
        for split in (4, 5, 6)
    }
    assert layout[4] == [
        ("ConvTranspose2d", 32, 32, (4, 4), (2, 2)),
        ("ReLU", None, None, None, None),
        ("ConvTranspose2d", 32, 3, (3, 3), (1, 1)),
        ("Sigmoid", None, None, None, None),
    ]
    assert (
        layout[5]
        == layout[6]
        == [
            ("ConvTranspose2d", 64, 32, (4, 4), (2, 2)),
            ("ReLU", None, None, None, None),
            ("ConvTranspose2d", 32, 3, (4, 4), (2, 2)),
            ("Sigmoid", None, None, None, None),
        ]
    )
    x = torch.rand(2, 3, 32, 32)
    assert net.decoder(4)(net.stem(4)(x)).shape == x.shape
    assert net.decodable_splits() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match=r"split=2 keeps the input resolution: no decoder; valid splits \[3, 4, 5, 6\]"):
        net.decoder(2)


def test_resnet34_split_and_decoder():
    net = create_model("resnet34", 12)
    assert net.stem_shape(15) == (512, 7, 7)
    dec = net.decoder(15)
    convs = [m for m in dec if isinstance(m, nn.ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [256, 128, 64, 32, 3]
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in dec) == 2


def test_head_dropout_only_in_fresh_heads():
    net = create_model("wrn16_1", 10, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in net.head(5).modules())
    assert not any(isinstance(m, nn.Dropout) for m in create_model("wrn16_1", 10).modules())


def test_split_out_of_range():
    with pytest.raises(ValueError, match=r"split=9 must be in \[0, 6\]"):
        create_model("wrn16_1", 10).stem(9)
