"""What an ``model.onnx`` must be before ONNX Runtime or TensorRT gets it: self-contained, and the card's
network.

Why: the card's checksum covers ``model.onnx`` alone. An ONNX whose weights live in external data (a
``weights.bin`` beside it, or any path) loaded bytes no checksum covers, so such a file is refused
outright: shipped engines embed their weights (``onnx_export``, ``external_data=False``). And an ONNX
is not the card's network just because the card says so: a card stating 2 scales beside the shipped
4-scale ONNX ran silently. The convolution weights are compared by shape with the card's network.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sbd_stream.compute.model import Architecture
from sbd_stream.engines.card import EngineCard
from sbd_stream.engines.errors import ArtefactError, IntegrityError
from sbd_stream.engines.network_fit import dncnn_conv_shapes


def check_onnx(data: bytes, card: EngineCard, path: Path) -> None:
    """Refuse the verified bytes ``data`` of ``path`` unless they are a self-contained ONNX of the
    card's network (``IntegrityError`` for external data, ``ArtefactError`` otherwise)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load_model_from_string(data)  # parses only: external data is never read here
    except Exception as e:  # google.protobuf DecodeError for a truncated or foreign file
        raise ArtefactError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from e
    for tensor in _tensors(model):
        if uses_external_data(tensor):
            where = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise IntegrityError(
                f"{path} keeps weights in external data ({where!r}), which no checksum covers; "
                "engines embed their weights in model.onnx"
            )
    check_network(model, card, path)


def check_network(model: Any, card: EngineCard, path: Path) -> None:
    """The ONNX's convolution weights (its 4-D initializers and constants) must be the card's network's,
    shape for shape.

    Why not the card's ``parameters``: the export folds batch norm into the convolutions, so the ONNX
    has fewer values than the network (48837 against 49121 for the shipped 4-scale engine: the norms'
    scales go, biases appear), while every convolution weight keeps its shape. DnCNN cards do not state
    their depth: the file's is taken, the rest compared."""
    have = Counter(tuple(t.dims) for t in _weights(model) if len(t.dims) == 4)
    if card.architecture is Architecture.dncnn:
        want = Counter(dncnn_conv_shapes(card.channels, have))
    else:
        net = card.build_model_meta()  # shapes only, whatever the card's size
        convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
        want = Counter(tuple(m.weight.shape) for m in net.modules() if isinstance(m, convs))
    if want != have:
        n_want = sum(_numel(s) * k for s, k in want.items())
        n_have = sum(_numel(s) * k for s, k in have.items())
        raise ArtefactError(
            f"{path} does not hold the card's network ({card.network}): its convolution weights are "
            f"{n_have} values in {sum(have.values())} tensors, the card's network has {n_want} in "
            f"{sum(want.values())}"
        )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _weights(model: Any) -> Iterator[Any]:
    """The main graph's initializers and Constant tensors: where an exporter puts a network's weights."""
    yield from model.graph.initializer
    for node in model.graph.node:
        if node.op_type == "Constant":
            yield from (a.t for a in node.attribute if a.name == "value")


def _tensors(model: Any) -> Iterator[Any]:
    """Every tensor a model holds: initializers, sparse ones, and node attributes, in every subgraph and
    function (any of them can point at external data)."""
    yield from _graph_tensors(model.graph)
    for fn in model.functions:
        for node in fn.node:
            yield from _attribute_tensors(node)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        yield from _attribute_tensors(node)


def _attribute_tensors(node: Any) -> Iterator[Any]:
    for a in node.attribute:
        if a.HasField("t"):
            yield a.t
        yield from a.tensors
        if a.HasField("sparse_tensor"):
            yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
        for sparse in a.sparse_tensors:
            yield from (sparse.values, sparse.indices)
        if a.HasField("g"):
            yield from _graph_tensors(a.g)
        for g in a.graphs:
            yield from _graph_tensors(g)
