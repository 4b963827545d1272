"""The vision half of lesson 12 on the shared training core: xresnet models (`xresnet`), MixUp / CutMix / label
smoothing (`tricks`), image folders and Pets (`data`), and the `python -m vision train|transfer` entry points."""
