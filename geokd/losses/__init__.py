"""Distillation losses: functional forms and ``nn.Module`` wrappers, registered by name.

One module per family; importing this package registers all of them.
"""

from geokd.losses.registry import available_losses, build_loss, get_loss_class, register_loss

__all__ = ["available_losses", "build_loss", "get_loss_class", "register_loss"]
