"""fraud-mlops: simulate, featurize, train, evaluate, register and serve payment-fraud models."""

__version__ = "0.1.0"
