"""NeMo (Hintersdorf et al. 2024) and NeMo-C: find, store and deactivate memorization neurons.

Modules: layers (which modules are NeMo layers), activations, stats, detect (memorization scores),
localize (initial selection + refinement, batched and sequential), import_csv (reference output),
clusters (NeMo-C), hooks (channel zeroing). Nothing heavy is imported here.
"""
