"""Hugging Face remote code for exported Borealis models (written by `borealis.export`).

`configuration_borealis.py` and `modeling_borealis.py` are copied verbatim into every
exported directory and loaded by `AutoModel.from_pretrained(dir, trust_remote_code=True)`
on machines that do not have borealis, so they import only torch and transformers (and
each other, relatively). This package file exists so that setuptools ships them; at run
time only `borealis.export` (to copy them) and the tests touch them.
"""
