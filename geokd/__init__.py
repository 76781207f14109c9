"""geokd: geometric knowledge distillation.

Latent geometry graphs built from a network's layer activations, distillation losses
that copy a teacher's geometry into a student (GKD, RKD and others), and graph signal
processing analyses of what each layer learned.
"""

__version__ = "0.1.0"
