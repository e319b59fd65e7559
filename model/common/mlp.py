"""Multi-layer perceptrons shared by denoisers, critics and Gaussian policies."""

import torch
from torch import nn


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with tanh's backward g (1 - y^2) from the saved output y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2).mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


class Tanh(nn.Module):
    """Elementwise tanh. On CPU it is computed as 2 sigmoid(2x) - 1 (within 2.4e-7 of torch.tanh in float32): the
    CPU tanh kernel of this torch build takes 168 us on a (2, 256, 128) float32 tensor where sigmoid takes 28 us,
    and DSRL's critics and noise actor apply it 13 times per gradient step (docs/PERFORMANCE.md). Elsewhere it is
    torch.tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SigmoidTanh.apply(x) if x.device.type == "cpu" else torch.tanh(x)


ACTIVATIONS = {
    "ReLU": nn.ReLU,
    "Mish": nn.Mish,
    "ELU": nn.ELU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Tanh": Tanh,
    "Identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation '{name}': use one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()


class OutputLinear(nn.Linear):
    """The output layer of a network: a Linear layer that runs in float32 also under bf16 autocast
    (dppo/precision.py), so the values, noise predictions and means it outputs are not rounded to bf16's 8-bit
    mantissa (a value of 30 would move in steps of 0.125). It is the narrowest layer: float32 costs little there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


class MLP(nn.Module):
    """Plain MLP: Linear -> [LayerNorm] -> activation for each hidden layer, then a Linear output.

    x: (B, input_dim) -> (B, output_dim)
    """

    def __init__(self, input_dim: int, hidden_dims: list[int], output_dim: int, activation: str = "Mish",
                 out_activation: str = "Identity", use_layernorm: bool = False):
        super().__init__()
        layers = []
        dims = [input_dim, *hidden_dims]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(nn.Linear(d_in, d_out))
            if use_layernorm:
                layers.append(nn.LayerNorm(d_out))
            layers.append(make_activation(activation))
        layers.append(OutputLinear(dims[-1], output_dim))
        layers.append(make_activation(out_activation))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PreActivationResidualBlock(nn.Module):
    """x + Linear(act([LN] Linear(act([LN] x)))): two pre-activation layers with a skip connection.

    x: (B, dim) -> (B, dim)
    """

    def __init__(self, dim: int, activation: str, use_layernorm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim) if use_layernorm else nn.Identity()
        self.norm2 = nn.LayerNorm(dim) if use_layernorm else nn.Identity()
        self.act1 = make_activation(activation)
        self.act2 = make_activation(activation)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.act1(self.norm1(x)))
        h = self.fc2(self.act2(self.norm2(h)))
        return x + h


class ResidualMLP(nn.Module):
    """Residual MLP: input Linear, two-layer residual blocks, output Linear.

    `hidden_dims` lists the hidden layers and must hold one width an odd number
    of times: [512, 512, 512] is the input layer to 512 followed by one
    residual block of two 512-wide layers.

    x: (B, input_dim) -> (B, output_dim)
    """

    def __init__(self, input_dim: int, hidden_dims: list[int], output_dim: int, activation: str = "Mish",
                 out_activation: str = "Identity", use_layernorm: bool = False):
        super().__init__()
        width = hidden_dims[0]
        if any(d != width for d in hidden_dims) or len(hidden_dims) % 2 == 0:
            raise ValueError(
                f"ResidualMLP needs an odd number of equal hidden widths (e.g. [512, 512, 512]), got {list(hidden_dims)}."
            )
        n_blocks = (len(hidden_dims) - 1) // 2
        self.input_layer = nn.Linear(input_dim, width)
        self.blocks = nn.Sequential(
            *[PreActivationResidualBlock(width, activation, use_layernorm) for _ in range(n_blocks)]
        )
        self.output_layer = OutputLinear(width, output_dim)
        self.out_activation = make_activation(out_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_activation(self.output_layer(self.blocks(self.input_layer(x))))


def make_mlp(input_dim: int, hidden_dims: list[int], output_dim: int, residual: bool, **kwargs) -> nn.Module:
    """ResidualMLP when `residual`, else MLP; kwargs: activation, out_activation, use_layernorm."""
    cls = ResidualMLP if residual else MLP
    return cls(input_dim, list(hidden_dims), output_dim, **kwargs)
