"""Distillation losses: functional forms and ``nn.Module`` wrappers, registered by name.

One module per family; importing this package registers all of them.
"""

from geokd.losses.registry import available_losses, build_loss, get_loss_class, register_loss
from geokd.losses import kd  # noqa: F401  (registers "kd")
from geokd.losses import fitnet  # noqa: F401  (registers "fitnet")
from geokd.losses import attention  # noqa: F401  (registers "attention")
from geokd.losses import activation_boundary  # noqa: F401  (registers "activation_boundary")
from geokd.losses import fsp  # noqa: F401  (registers "fsp")
from geokd.losses import kdsvd  # noqa: F401  (registers "kdsvd")

__all__ = ["available_losses", "build_loss", "get_loss_class", "register_loss"]

from geokd.losses import gkd, rkd  # noqa: E402  (importing registers "gkd", "rkd*")
from geokd.losses.gkd import GKDLoss, gkd_loss  # noqa: E402
from geokd.losses.rkd import RKDAngleLoss, RKDDistanceLoss, RKDLoss, rkd_angle_loss, rkd_distance_loss  # noqa: E402

__all__ += ["GKDLoss", "gkd_loss", "RKDAngleLoss", "RKDDistanceLoss", "RKDLoss", "rkd_angle_loss", "rkd_distance_loss"]

# Whole systems whose machinery lives in geokd.methods, usable as terms by name too.
from geokd.methods.iep import IEPLoss  # noqa: E402
from geokd.methods.mhgd import MHGDLoss  # noqa: E402

register_loss("iep")(IEPLoss)
register_loss("mhgd")(MHGDLoss)
