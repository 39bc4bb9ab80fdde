"""A user's own generator as an agd teacher: ``agd compress --teacher my_generator:make_generator``.

The factory takes no arguments and returns an ``nn.Module`` (agd puts it in eval mode and freezes it). agd
finds the task and scale with one probe forward (same size out: translation; k x k: SR x k) and the size
multiple its inputs need. It feeds the network RGB images in [0, 1] unless the module says otherwise with
a ``value_range`` attribute, as this one does (or the user passes ``--teacher-range -1,1``).

The network here is a CycleGAN-style ResNet generator written from scratch, loading the weights that the
``vintagify`` package ships (installed by requirements-teachers.txt), so the example runs as it is; put your
own network and weight file in its place.
"""

import importlib.util
from pathlib import Path

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c, affine=True),
                                   nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3),
                                   nn.InstanceNorm2d(c, affine=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MyGenerator(nn.Module):
    value_range = (-1.0, 1.0)  # trained on [-1, 1] images (tanh output)

    def __init__(self, ngf: int = 64, n_blocks: int = 9) -> None:
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=True)  # noqa: E731
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), norm(ngf), nn.ReLU(True)]
        for c in (ngf, 2 * ngf):  # two stride-2 downsamplings
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), norm(2 * c), nn.ReLU(True)]
        layers += [Block(4 * ngf) for _ in range(n_blocks)]
        for c in (4 * ngf, 2 * ngf):  # and back up
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), norm(c // 2),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def make_generator() -> nn.Module:
    spec = importlib.util.find_spec("vintagify")  # locates the package without importing it
    weights = Path(spec.submodule_search_locations[0]) / "resources" / "G_A2B_epoch33.pth"
    net = MyGenerator()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net
