"""The pieces of ``tiercache demo``, reusable by ``benchmarks/dataloader.py``.

``server``: an S3-compatible server (moto) on loopback in its own process; ``data``: a
synthetic token dataset; ``model``: the small model whose step the loop runs; ``run``: the
epoch loop that measures samples/s, hit ratios, origin bytes and data-wait per epoch.
"""
