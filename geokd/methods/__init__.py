"""Whole distillation systems beyond a single loss term.

- :mod:`geokd.methods.byot` — BYOT self-distillation (exits per section, anytime inference);
- :mod:`geokd.methods.selective` — selective KD: drop the inputs the teacher embeds poorly
  (a min-cut on the teacher's k-NN graph) and distill on the rest;
- :mod:`geokd.methods.iep` — IEP: stacked PCA, incremental PCA, MPNN graph knowledge;
- :mod:`geokd.methods.mhgd` — MHGD: multi-head attention graphs between layers.
"""
