"""agd: AutoGAN-Distiller style compression of pretrained image generators.

Importing agd does no file I/O and loads no extension; everything heavy is lazy.
"""

__version__ = "0.1.0"
