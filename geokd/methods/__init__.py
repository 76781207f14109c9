"""Whole distillation systems beyond a single loss term.

- :mod:`geokd.methods.byot` — BYOT self-distillation: a bottleneck + FC exit per section,
  CE + KL from the deepest exit + feature hint, per-exit accuracy, timing (anytime
  inference) and GSP smoothness;
- :mod:`geokd.methods.selective` — selective KD: a per-class minimum cut on the teacher's
  k-NN graph drops the inputs it embeds poorly; distil on the rest;
- :mod:`geokd.methods.iep` — IEP: stacked PCA (first principal direction, stereographic
  map, incremental PCA with an EMA mean), cosine graphs, a gated MPNN fitted on the
  teacher, L1-on-messages + graph-KL student loss; :mod:`geokd.methods.iep_figure` draws
  its 3-D embedding per stage;
- :mod:`geokd.methods.mhgd` — MHGD: 8-head attention graphs between consecutive layers'
  singular-vector embeddings, fitted on the teacher, KL for the student;
- :mod:`geokd.methods.digits` — the embedded-default runs of all four on digits
  (``geokd methods {byot,selective,iep,mhgd}``).
"""
