"""training: the offline adapter training job (latent adversarial training) and its export.

Owns: the job's config, data, retrievers, losses, discriminator, EMA, checkpoints,
distributed set-up and export to a model directory.
Imports: ``retrieval`` (the same search and features the service uses) and ``engines``;
never ``service``, ``toyworld``, ``bench`` or ``lab``.
Entry points: ``training.adapter.train(config) -> TrainResult``,
``training.export.export_checkpoint(ckpt, out)``, ``training.teacher_samples``;
CLI ``ragturbo train adapter|export|teacher-samples`` (docs/training.md).
"""
