"""The toy-world model family: its configs (``configs``), data splits (``data``), the teacher's
sampler (``teacher``), the adapter stage (``arms``: several arms on one batch stream, smooth-L1
to paired teacher targets), an arm's decoder and adapter weights (``variants``), the retrieval
split as a database (``adapter``) and writing a model dir (``export``). The VAE, text-encoder,
teacher and student trainers and the staged runs that call them are in ``lab/toyworld``.
Nothing runs at import.
"""
