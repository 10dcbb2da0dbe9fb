"""The toy-world model family: its configs (``configs``), data splits (``data``), the teacher's
sampler (``teacher``), an adapter's decoder and adapter weights (``variants``), writing a
model dir (``export``), and the concept-dropout rows (``concept_rows``) and their training
(``concept_train``). The shipped family's adapter
stage is the training job's regression objective (``training.regression``,
``training/recipes/toy-adapter.yaml``). The VAE, text-encoder, teacher and student trainers and
the staged runs that call them are in ``lab/toyworld``. Nothing runs at import.
"""
