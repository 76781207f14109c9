"""Small networks for 8×8 digits and MNIST-sized inputs: an MLP and a small CNN.

They give every dataset a teacher/student pair that trains in seconds on a CPU, e.g. the
classic MNIST pair of the KD literature: a 2×1200 MLP teacher and a 1×50…800 MLP student.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from geokd.models._common import GlobalAvgPool, check_positive_int
from geokd.models.batchnorm import BatchNorm2d


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Modules are named ``fc1, relu1, fc2, relu2, …, classifier``; the sensing points are
    the last (up to three) hidden ReLU outputs.

    Parameters
    ----------
    in_features : int
        ``C·H·W`` of the input (64 for 8×8 digits, 784 for MNIST); inputs of any shape
        ``(B, …)`` are flattened from dimension 1.
    hidden_sizes : sequence of int
        Width of each hidden layer, e.g. ``(1200, 1200)``.
    num_classes : int
        Output classes.
    dropout : float
        Dropout probability after each hidden ReLU (0 disables it; no module is added).

    Examples
    --------
    >>> import torch
    >>> net = MLP(in_features=64, hidden_sizes=(32, 16), num_classes=10)
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    >>> net.sensing_points
    ('relu1', 'relu2')
    """

    def __init__(self, *, in_features: int, hidden_sizes=(1200, 1200), num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("num_classes", num_classes)
        hidden_sizes = tuple(hidden_sizes)
        if not hidden_sizes:
            raise ValueError("MLP: hidden_sizes must name at least one hidden layer, got ()")
        for size in hidden_sizes:
            check_positive_int("MLP hidden size", size)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        self.hidden_sizes = hidden_sizes
        self.num_classes = num_classes
        self.dropout = float(dropout)

        self.flatten = nn.Flatten()
        width = in_features
        for index, size in enumerate(hidden_sizes, start=1):
            self.add_module(f"fc{index}", nn.Linear(width, size))
            self.add_module(f"relu{index}", nn.ReLU())
            if dropout > 0:
                self.add_module(f"dropout{index}", nn.Dropout(dropout))
            width = size
        self.classifier = nn.Linear(width, num_classes)
        names = [f"relu{index}" for index in range(1, len(hidden_sizes) + 1)]
        self.sensing_points = tuple(names[-3:])

    def forward(self, x: Tensor) -> Tensor:
        x = self.flatten(x)
        if x.shape[1] != self.in_features:
            raise ValueError(f"MLP: expected inputs with {self.in_features} features, got {x.shape[1]}")
        for index in range(1, len(self.hidden_sizes) + 1):
            x = getattr(self, f"relu{index}")(getattr(self, f"fc{index}")(x))
            if self.dropout > 0:
                x = getattr(self, f"dropout{index}")(x)
        return self.classifier(x)

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {
            "in_features": self.in_features,
            "hidden_sizes": list(self.hidden_sizes),
            "num_classes": self.num_classes,
            "dropout": self.dropout,
        }


class SmallCNN(nn.Module):
    """Three conv stages (conv3x3 → BN → ReLU; strides 1, 2, 2) → global pool → linear.

    Works on 8×8 digits as well as 28×28 MNIST and 32×32 CIFAR. Each stage is a named
    ``nn.Sequential`` with children ``conv``, ``bn``, ``relu`` (so ``"stage2.relu:input"``
    taps a pre-activation).

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_classes : int
        Output classes.
    widths : sequence of three int
        Channels of the three stages.

    Attributes
    ----------
    sensing_points : tuple of str
        ``("stage1", "stage2", "pool")``.

    Examples
    --------
    >>> import torch
    >>> net = SmallCNN(in_channels=1, num_classes=10, widths=(8, 16, 32))
    >>> net(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """

    sensing_points = ("stage1", "stage2", "pool")

    def __init__(self, *, in_channels: int = 1, num_classes: int = 10, widths=(16, 32, 64)):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        widths = tuple(widths)
        if len(widths) != 3:
            raise ValueError(f"SmallCNN: widths must give 3 stage widths, got {widths!r}")
        for width in widths:
            check_positive_int("SmallCNN width", width)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = widths

        channels = in_channels
        for index, (width, stride) in enumerate(zip(widths, (1, 2, 2)), start=1):
            stage = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                    bn=BatchNorm2d(width),
                    relu=nn.ReLU(),
                )
            )
            self.add_module(f"stage{index}", stage)
            channels = width
        self.pool = GlobalAvgPool()
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN: expected a (B, {self.in_channels}, H, W) batch, got shape {tuple(x.shape)}"
            )
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.linear(self.pool(x))

    def config(self) -> dict:
        """Keyword arguments that rebuild this architecture."""
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "widths": list(self.widths)}
