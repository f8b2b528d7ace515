"""NumPy primitives against the torch / torchvision / sam3 functions they reproduce."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from npsam3 import kernels, nn

rng = np.random.default_rng(0)


def close(a, b, rtol=2e-6):
    b = b.detach().numpy() if torch.is_tensor(b) else b
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= rtol * max(np.abs(b).max(), 1.0), np.abs(a - b).max()


@pytest.mark.parametrize("boxes", [
    [[3.2, 4.1, 20.7, 17.9]],                    # inside
    [[-5.0, -3.0, 9.0, 8.0], [60.0, 50.0, 80.0, 75.0]],  # over the edges and outside
    [[10.0, 10.0, 10.3, 10.2]],                  # smaller than a pixel (roi size clamps to 1)
    [[0.0, 0.0, 72.0, 72.0]],                    # whole map: several samples per bin
])
def test_roi_align(boxes):
    feat = rng.standard_normal((16, 72, 64), dtype=np.float32)
    b = np.array(boxes, np.float32)
    want = torchvision.ops.roi_align(torch.from_numpy(feat)[None], [torch.from_numpy(b)], 7)
    close(nn.roi_align(feat, b, 7), want)


def test_grid_sample_points():
    feat = rng.standard_normal((8, 9, 13), dtype=np.float32)
    xy = np.array([[0.0, 0.0], [-1, -1], [1, 1], [0.93, -0.41], [-1.2, 0.3], [0.5, 1.05]], np.float32)
    want = F.grid_sample(torch.from_numpy(feat)[None], torch.from_numpy(xy)[None, :, None],
                         align_corners=False)[0, :, :, 0].T
    close(nn.grid_sample_points(feat, xy), want)


@pytest.mark.parametrize("size", [(480, 640), (333, 517), (288, 288), (100, 77), (1, 1)])
def test_interpolate_bilinear(size):
    x = rng.standard_normal((2, 72, 60), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(x)[None], size, mode="bilinear", align_corners=False)[0]
    close(nn.interpolate_bilinear(x, size), want)


@pytest.mark.parametrize("size", [(144, 144), (80, 112), (7, 5)])
def test_interpolate_nearest(size):
    x = rng.standard_normal((3, 40, 56), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(x)[None], size, mode="nearest")[0]
    close(nn.interpolate_nearest(x, size), want, rtol=0)


@pytest.mark.parametrize("cur, prev", [((20, 144, 144), (20, 72, 72)), ((9, 12, 30), (9, 4, 10)),
                                       ((3, 10, 8), (3, 10, 4)), ((3, 10, 9), (3, 4, 4))])
def test_upsample_add(cur, prev):
    """Integer factors (2, 2), (3, 3) and (1, 2) are the broadcast path; 10 x 9 from 4 x 4 is not."""
    c, p = rng.standard_normal(cur, dtype=np.float32), rng.standard_normal(prev, dtype=np.float32)
    want = torch.from_numpy(c) + F.interpolate(torch.from_numpy(p)[None], cur[1:], mode="nearest")[0]
    close(nn.upsample_add(c, p), want, rtol=0)


@pytest.mark.parametrize("kernel_set", ["onnxruntime", "numpy"])
@pytest.mark.parametrize("k, pad, size", [(3, 1, (11, 9)), (3, 1, (12, 10)), (3, 1, (144, 144)),
                                          (1, 0, (11, 9)), (7, 0, (11, 9))])
def test_conv2d(k, pad, size, kernel_set):
    """NumPy: (3, 1) on even sizes is the Winograd path, the others are shifted GEMMs."""
    x = rng.standard_normal((6, *size), dtype=np.float32)
    conv = torch.nn.Conv2d(6, 5, k, padding=pad)
    p = {"c.weight": conv.weight.detach().numpy(), "c.bias": conv.bias.detach().numpy()}
    with kernels.use(kernel_set):
        close(nn.conv2d(x, p, "c", padding=pad), conv(torch.from_numpy(x)[None])[0])


@pytest.mark.parametrize("shape, view", [((3, 400, 500), np.s_[:]), ((3, 400, 500), np.s_[:, ::2]),
                                         ((7,), np.s_[:])])
def test_relu_is_in_place(shape, view):
    """Large contiguous maps run split over threads, other views in one call; both in place."""
    x = rng.standard_normal(shape, dtype=np.float32)[view]
    want = torch.relu(torch.from_numpy(x.copy())).numpy()
    assert nn.relu(x) is x and np.array_equal(x, want)


def test_group_norm_and_layer_norm():
    gn, ln = torch.nn.GroupNorm(4, 12), torch.nn.LayerNorm(12)
    for m in (gn, ln):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    p = {f"{n}.{k}": v.detach().numpy() for n, m in (("gn", gn), ("ln", ln))
         for k, v in m.state_dict().items()}
    x = 3 + 2 * rng.standard_normal((12, 5, 7), dtype=np.float32)
    want = gn(torch.from_numpy(x)[None])[0]
    close(nn.group_norm(x, p, "gn", 4), want)
    y = x.copy()
    assert nn.group_norm(y, p, "gn", 4, out=y) is y  # in place, as the pixel decoder runs it
    close(y, want)
    with pytest.raises(ValueError, match="C-contiguous"):
        nn.group_norm(x[:, :, ::2], p, "gn", 4, out=x[:, :, ::2])
    t = x.reshape(12, -1).T.copy()
    close(nn.layer_norm(t, p, "ln"), ln(torch.from_numpy(t)))


def test_sine_position_encodings():
    from sam3.model.model_misc import gen_sineembed_for_position
    from sam3.model.position_encoding import PositionEmbeddingSine

    pe = PositionEmbeddingSine(256, normalize=True)
    close(nn.position_encoding_sine(40, 56), pe(torch.zeros(1, 1, 40, 56))[0])
    x, y = rng.random(5, dtype=np.float32), rng.random(5, dtype=np.float32)
    for a, b in zip(nn.encode_xy(x, y), pe._encode_xy(torch.from_numpy(x), torch.from_numpy(y))):
        close(a, b)
    boxes = rng.random((7, 4), dtype=np.float32)
    close(nn.gen_sineembed_for_position(boxes), gen_sineembed_for_position(torch.from_numpy(boxes)[:, None])[:, 0])


@pytest.mark.parametrize("kernel_set", ["onnxruntime", "numpy"])
def test_attention_matches_multihead_attention(kernel_set):
    mha = torch.nn.MultiheadAttention(32, 4)
    torch.nn.init.normal_(mha.in_proj_bias)
    p = {f"a.{k}": v.detach().numpy() for k, v in mha.state_dict().items()}
    q = rng.standard_normal((1030, 32), dtype=np.float32)  # more than one query block
    kv = rng.standard_normal((9, 32), dtype=np.float32)
    pad = np.array([False] * 7 + [True] * 2)
    bias = rng.standard_normal((4, 1030, 9), dtype=np.float32)
    want = mha(torch.from_numpy(q)[:, None], torch.from_numpy(kv)[:, None], torch.from_numpy(kv)[:, None],
               key_padding_mask=torch.from_numpy(pad)[None],
               attn_mask=torch.from_numpy(bias), need_weights=False)[0][:, 0]
    with kernels.use(kernel_set):
        close(nn.multi_head_attention(q, kv, kv, p, "a", 4, attn_bias=bias, key_padding_mask=pad), want)
        close(nn.multi_head_attention(q[:3], kv, kv, p, "a", 4, attn_bias=bias[:, :3],
                                      key_padding_mask=pad), want[:3])  # few queries: folded


def test_sigmoid_and_inverse_sigmoid():
    from sam3.model.model_misc import inverse_sigmoid

    x = np.array([-100, -10, -1e-3, 0, 1e-3, 3, 100], np.float32)
    close(nn.sigmoid(x), torch.sigmoid(torch.from_numpy(x)))
    p = np.array([0, 1e-4, 0.3, 0.999, 1.0], np.float32)
    close(nn.inverse_sigmoid(p), inverse_sigmoid(torch.from_numpy(p)))
