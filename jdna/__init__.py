"""jdna: study what compression does to pretrained transformers as tasks get harder."""

__version__ = "0.1.0"
