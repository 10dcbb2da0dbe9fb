"""The offline adapter training job (latent adversarial training) and its export.

Entry points: ``training.adapter.train(config) -> TrainResult``,
``training.export.export_checkpoint(ckpt, out)``, ``training.teacher_samples``;
CLI ``ragturbo train adapter|export|teacher-samples`` (docs/training.md).
"""
