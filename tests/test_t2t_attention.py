"""T2T-ViT's attention reaches CUDA's fused kernels: every SDPA call gets 4-D q/k/v, with the old 3-D call's values."""

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fasttrain.models import create_model
from fasttrain.models.t2t_vit import TokenAttention


class RecordSdpa(TorchFunctionMode):
    """Records the shapes of q, k and v of every scaled_dot_product_attention call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.calls.append(tuple(tuple(t.shape) for t in args[:3]))
        return func(*args, **(kwargs or {}))


def test_every_sdpa_call_of_the_model_is_four_dimensional():
    model = create_model("t2t_vit_t_14", 10, embed_dim=32, depth=2, num_heads=2, img_size=64).eval()
    with RecordSdpa() as record, torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(record.calls) == 2 + 2  # two token blocks between the soft splits, then depth 2 transformer blocks
    assert all(len(shape) == 4 for call in record.calls for shape in call), record.calls


def test_token_attention_equals_the_old_three_dimensional_call():
    torch.manual_seed(0)
    attention = TokenAttention(dim=27, out_dim=16)
    x = torch.randn(2, 50, 27)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)
    old = v + attention.proj(F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(attention(x), old, rtol=1e-5, atol=1e-6)
