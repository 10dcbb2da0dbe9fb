"""The toy-world model family: configs and training loops of each stage.

Stages (each a function taking a config and returning trained modules + a loss log):
``vae`` (AutoencoderKL, 64x64 RGB -> 16x16x4), ``text`` (CLIPTextModel trained
CLIP-style against a small image encoder), ``teacher`` (multi-step UNet,
v-prediction) and ``student`` (one-step UNet distilled from teacher samples with a
latent adversarial term). ``toyworld.recipes`` chains them; nothing runs at import.
The shipped family's adapter stage is the training job's regression objective
(``training.regression``, ``training/recipes/toy-adapter.yaml``); ``concept_rows`` and
``concept_train`` build and train concept-dropout rows with it; ``variants`` reads and writes
a trained model's decoder and adapter weights.
"""
