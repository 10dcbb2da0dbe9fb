"""The toy-world model family: configs and training loops of each stage.

Stages (each a function taking a config and returning trained modules + a loss log):
``vae`` (AutoencoderKL, 64x64 RGB -> 16x16x4), ``text`` (CLIPTextModel trained
CLIP-style against a small image encoder), ``teacher`` (multi-step UNet,
v-prediction) and ``student`` (one-step UNet distilled from teacher samples with a
latent adversarial term). ``toyworld.recipes`` chains them; nothing runs at import.
The adapter stage of the shipped family is ``arms`` (several arms on one batch stream,
smooth-L1 to paired teacher targets); ``variants`` reads and writes an arm's decoder and
adapter weights.
"""
