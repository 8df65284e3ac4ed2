"""dnnq benchmark harness: ``python -m bench`` times ``models.fit`` against PyTorch and scikit-learn.

This package's ``__init__`` imports nothing on purpose: ``bench/__main__.py`` must be able to
clean the OpenBLAS environment variables before NumPy is loaded.
"""
