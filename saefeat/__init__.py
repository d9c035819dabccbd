"""saefeat: sparse autoencoders and feature discovery for language models.

Kept import-light on purpose: the kernels and SAE modules must import on a GPU box
that has only torch and triton.
"""

__version__ = "0.1.0"
