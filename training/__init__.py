"""The offline lifecycle: simulate, load, featurize, train, evaluate, register, compile, import
into the Bento store, release; the retraining pipeline and the ``fraudops`` CLI."""

__version__ = "0.1.0"
