"""A tiny, valid TensorFlow Lite model built without TensorFlow, for the edge-AI inference benchmark.

The model is ``y = (x · Wᵀ + b) + c``: one FULLY_CONNECTED operator followed by one ADD, float32, with
constant weights derived from a seed. It is written with the ``flatbuffers`` builder straight from the
TFLite schema (``schema.fbs``, file identifier ``TFL3``), so it needs neither TensorFlow nor the
``tflite`` package. Both ``ai-edge-litert`` and ``tflite-runtime`` load it.
"""

from __future__ import annotations

import importlib
import random
import struct
from dataclasses import dataclass
from typing import Any, Final

from prsm_edge.errors import LocalError

__all__ = ["TinyModel", "build_model"]

# Schema constants (tensorflow/lite/schema/schema.fbs).
_OP_ADD: Final = 0
_OP_FULLY_CONNECTED: Final = 9
_FLOAT32: Final = 0
_OPTIONS_FULLY_CONNECTED: Final = 8
_OPTIONS_ADD: Final = 11
_SCHEMA_VERSION: Final = 3


@dataclass(frozen=True, slots=True)
class TinyModel:
    """The model's bytes and the constants needed to compute its output independently."""

    content: bytes
    inputs: int
    outputs: int
    weights: tuple[float, ...]  # row-major, outputs × inputs
    bias: tuple[float, ...]
    offset: tuple[float, ...]

    def reference(self, x: list[float]) -> list[float]:
        """The model's output for one input row, computed in plain Python."""
        out = []
        for o in range(self.outputs):
            row = self.weights[o * self.inputs : (o + 1) * self.inputs]
            out.append(sum(w * v for w, v in zip(row, x, strict=True)) + self.bias[o] + self.offset[o])
        return out

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference."""
        return self.inputs * self.outputs


def _flatbuffers() -> Any:
    try:
        return importlib.import_module("flatbuffers")
    except ImportError as exc:
        raise LocalError(
            "the flatbuffers package is needed to build the model (pip install flatbuffers)"
        ) from exc


def _int_vector(builder: Any, values: list[int]) -> int:
    builder.StartVector(4, len(values), 4)
    for v in reversed(values):
        builder.PrependInt32(v)
    return int(builder.EndVector())


def _offset_vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        builder.PrependUOffsetTRelative(off)
    return int(builder.EndVector())


def _floats(values: tuple[float, ...]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def build_model(inputs: int = 64, outputs: int = 64, seed: int = 1) -> TinyModel:
    """Build the FULLY_CONNECTED + ADD model with ``inputs`` features and ``outputs`` units."""
    if not (1 <= inputs <= 4096 and 1 <= outputs <= 4096):
        raise LocalError(f"model size {inputs}×{outputs} is outside 1..4096")
    rng = random.Random(seed)
    # Round through float32 so the Python reference uses exactly the stored constants.
    weights = struct.unpack(
        f"<{inputs * outputs}f", _floats(tuple(rng.uniform(-1, 1) for _ in range(inputs * outputs)))
    )
    bias = struct.unpack(f"<{outputs}f", _floats(tuple(rng.uniform(-1, 1) for _ in range(outputs))))
    offset = struct.unpack(f"<{outputs}f", _floats(tuple(rng.uniform(-1, 1) for _ in range(outputs))))

    fb = _flatbuffers()
    b = fb.Builder(4 * inputs * outputs + 4096)

    # Buffers: 0 must stay empty; 1 weights, 2 bias, 3 offset; tensors without data point at buffer 0.
    def buffer(data: bytes | None) -> int:
        vec = None
        if data is not None:
            b.StartVector(1, len(data), 16)
            b.head = b.head - len(data)
            b.Bytes[b.head : b.head + len(data)] = data
            vec = b.EndVector()
        b.StartObject(3)
        if vec is not None:
            b.PrependUOffsetTRelativeSlot(0, vec, 0)
        return int(b.EndObject())

    buffers = [buffer(None), buffer(_floats(weights)), buffer(_floats(bias)), buffer(_floats(offset))]

    def tensor(name: str, shape: list[int], buf: int) -> int:
        name_off = b.CreateString(name)
        shape_off = _int_vector(b, shape)
        b.StartObject(4)
        b.PrependUOffsetTRelativeSlot(0, shape_off, 0)
        b.PrependInt8Slot(1, _FLOAT32, 0)
        b.PrependUint32Slot(2, buf, 0)
        b.PrependUOffsetTRelativeSlot(3, name_off, 0)
        return int(b.EndObject())

    tensors = [
        tensor("x", [1, inputs], 0),  # 0
        tensor("weights", [outputs, inputs], 1),  # 1
        tensor("bias", [outputs], 2),  # 2
        tensor("fc", [1, outputs], 0),  # 3
        tensor("offset", [1, outputs], 3),  # 4
        tensor("y", [1, outputs], 0),  # 5
    ]

    def options(slots: int) -> int:
        b.StartObject(slots)
        b.PrependInt8Slot(0, 0, 0)  # fused activation: NONE
        return int(b.EndObject())

    def operator(opcode: int, ins: list[int], outs: list[int], opt_type: int, opt: int) -> int:
        ins_off = _int_vector(b, ins)
        outs_off = _int_vector(b, outs)
        b.StartObject(5)
        b.PrependUint32Slot(0, opcode, 0)
        b.PrependUOffsetTRelativeSlot(1, ins_off, 0)
        b.PrependUOffsetTRelativeSlot(2, outs_off, 0)
        b.PrependUint8Slot(3, opt_type, 0)
        b.PrependUOffsetTRelativeSlot(4, opt, 0)
        return int(b.EndObject())

    ops = [
        operator(0, [0, 1, 2], [3], _OPTIONS_FULLY_CONNECTED, options(5)),
        operator(1, [3, 4], [5], _OPTIONS_ADD, options(2)),
    ]

    tensors_vec = _offset_vector(b, tensors)
    inputs_vec = _int_vector(b, [0])
    outputs_vec = _int_vector(b, [5])
    ops_vec = _offset_vector(b, ops)
    sg_name = b.CreateString("main")
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, inputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, outputs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, ops_vec, 0)
    b.PrependUOffsetTRelativeSlot(4, sg_name, 0)
    subgraph = b.EndObject()

    def opcode(code: int) -> int:
        b.StartObject(4)
        b.PrependInt8Slot(0, code, 0)  # deprecated_builtin_code (codes < 127 live here too)
        b.PrependInt32Slot(2, 1, 1)  # version
        b.PrependInt32Slot(3, code, 0)  # builtin_code
        return int(b.EndObject())

    codes = [opcode(_OP_FULLY_CONNECTED), opcode(_OP_ADD)]
    codes_vec = _offset_vector(b, codes)
    subgraphs_vec = _offset_vector(b, [subgraph])
    buffers_vec = _offset_vector(b, buffers)
    desc = b.CreateString("prsm-edge tiny benchmark model")
    b.StartObject(5)
    b.PrependUint32Slot(0, _SCHEMA_VERSION, 0)
    b.PrependUOffsetTRelativeSlot(1, codes_vec, 0)
    b.PrependUOffsetTRelativeSlot(2, subgraphs_vec, 0)
    b.PrependUOffsetTRelativeSlot(3, desc, 0)
    b.PrependUOffsetTRelativeSlot(4, buffers_vec, 0)
    model = b.EndObject()
    b.Finish(model, file_identifier=b"TFL3")
    return TinyModel(bytes(b.Output()), inputs, outputs, weights, bias, offset)
