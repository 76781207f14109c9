"""The CIFAR-100 networks of the CRD distillation benchmark, under the benchmark's names.

The standard table of feature distillation (CRD, Tian et al., ICLR 2020; its code,
HobbitLong/RepDistiller ``models/``) pairs teachers and students among these networks.
Each is rewritten here in geokd's style (every ReLU a module, a named ``pool``, declared
``sensing_points``) with the reference's layers, parameter counts and parameter names, so
its released teachers load strictly:

=====================  ==========================================  ===================
benchmark name         class (family name in the registry)          sensing points
=====================  ==========================================  ===================
resnet8x4, resnet32x4  :class:`CrdResNet` (``crd_resnet``)          stem, 3 stages, pool
ResNet50               :class:`BottleneckResNet`                    stem, 4 stages, pool
wrn_16_1 … wrn_40_2    :class:`CrdWideResNet` (``crd_wrn``)         stem, 3 stages, pool
vgg8 … vgg19           :class:`CrdVGG` (``crd_vgg``)                5 blocks, pool
mobilenetv2            :class:`CifarMobileNetV2`                    stem, 4 stages, pool
shufflenetv1, v2       :class:`CifarShuffleNetV1`, ``…V2``          stem, 3 stages, pool
=====================  ==========================================  ===================

The sensing points are the features of the reference's ``forward(is_feat=True)``, the
layers the benchmark's feature methods distil. RepDistiller's own spellings
(``mobile_half``, ``ShuffleV1``, ``ShuffleV2``) name the same networks.

``resnet8`` … ``resnet110`` are not here: the benchmark's plain CIFAR ResNets are exactly
geokd's :class:`~geokd.models.CifarResNet` (same layers and parameter count; option-B
projection shortcuts), which the registry already serves under those names.

Examples
--------
>>> from geokd.models import build_model
>>> net = build_model("resnet32x4")
>>> type(net).__name__, net.sensing_points
('CrdResNet', ('relu', 'layer1', 'layer2', 'layer3', 'pool'))
>>> sorted(CRD_MODELS)[:4]
['ResNet50', 'ShuffleV1', 'ShuffleV2', 'crd_bottleneck_resnet']
"""

from __future__ import annotations

from torch import nn

from geokd.models.crd.mobilenetv2 import CifarMobileNetV2
from geokd.models.crd.resnet import CrdResNet
from geokd.models.crd.resnet50 import BottleneckResNet
from geokd.models.crd.shufflenetv1 import CifarShuffleNetV1
from geokd.models.crd.shufflenetv2 import CifarShuffleNetV2
from geokd.models.crd.vgg import CrdVGG
from geokd.models.crd.wrn import CrdWideResNet

__all__ = ["CRD_MODELS", "BottleneckResNet", "CifarMobileNetV2", "CifarShuffleNetV1", "CifarShuffleNetV2",
           "CrdResNet", "CrdVGG", "CrdWideResNet"]

_X4 = (32, 64, 128, 256)   # stem and stage widths of the "×4" CIFAR ResNets

# registry name -> (class, keywords the name fixes). Each class has one name that fixes
# nothing: the family name that model_config() records, so a saved run rebuilds it.
CRD_MODELS: dict[str, tuple[type[nn.Module], dict]] = {
    "crd_resnet": (CrdResNet, {}),
    "resnet8x4": (CrdResNet, {"depth": 8, "widths": _X4}),
    "resnet32x4": (CrdResNet, {"depth": 32, "widths": _X4}),
    "crd_bottleneck_resnet": (BottleneckResNet, {}),
    "ResNet50": (BottleneckResNet, {"num_blocks": (3, 4, 6, 3)}),
    "resnet50": (BottleneckResNet, {"num_blocks": (3, 4, 6, 3)}),
    "crd_wrn": (CrdWideResNet, {}),
    **{f"wrn_{depth}_{k}": (CrdWideResNet, {"depth": depth, "widen_factor": k}) for depth in (16, 40) for k in (1, 2)},
    "crd_vgg": (CrdVGG, {}),
    **{f"vgg{depth}": (CrdVGG, {"depth": depth}) for depth in (8, 11, 13, 16, 19)},
    "mobilenetv2": (CifarMobileNetV2, {}),
    "mobile_half": (CifarMobileNetV2, {"width_mult": 0.5, "expansion": 6}),
    "shufflenetv1": (CifarShuffleNetV1, {}),
    "ShuffleV1": (CifarShuffleNetV1, {"groups": 3}),
    "shufflenetv2": (CifarShuffleNetV2, {}),
    "ShuffleV2": (CifarShuffleNetV2, {"net_size": 1}),
}
