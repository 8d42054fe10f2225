"""Encoders: frozen pretrained networks (or any function) that turn samples into embeddings.

With ``Session(ds, encoder=...)`` the pool is embedded once, in the background, into a cache
beside the store, and the session's model is a small head over the embeddings that can learn
from every label::

    enc = dal.encoders.torchvision("resnet18", weights="DEFAULT")     # images
    enc = dal.encoders.sentence_transformer("all-MiniLM-L6-v2")       # texts
    enc = dal.encoders.from_module(my_network, name="mine")           # any torch module
    enc = dal.encoders.from_callable(my_api_call, name="api")         # any function
    enc = dal.encoders.precomputed("embeddings.npy")                  # made elsewhere
    enc = dal.encoders.self_supervised(ds)        # learned from the pool itself (SimCLR)

Nothing heavy is imported until an encoder is made.
"""

from __future__ import annotations

from dal_widgets.encoders._base import (
    Encoder,
    EncoderError,
    EncoderOutputError,
    from_callable,
    from_module,
    weights_digest,
)
from dal_widgets.encoders._cache import EmbeddingCache, EmbeddingJob, cache_root
from dal_widgets.encoders._precomputed import precomputed
from dal_widgets.encoders._pretrained import sentence_transformer, torchvision
from dal_widgets.encoders._selfsup import PretrainJob, SelfSupervisedEncoder, self_supervised

__all__ = [
    "EmbeddingCache",
    "EmbeddingJob",
    "Encoder",
    "EncoderError",
    "EncoderOutputError",
    "PretrainJob",
    "SelfSupervisedEncoder",
    "cache_root",
    "from_callable",
    "from_module",
    "precomputed",
    "self_supervised",
    "sentence_transformer",
    "torchvision",
    "weights_digest",
]
