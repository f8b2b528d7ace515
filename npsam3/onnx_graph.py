"""Serialise a small ONNX model (one graph of a few nodes with int / int-list attributes and
float32 initializers) without the ``onnx`` package, which the runtime does not depend on: the
kernels' one-node graphs are a little protobuf, written here field by field (field numbers from
onnx/onnx.proto).

    model([node("MultiHeadAttention", ["q", "k", "v"], ["o"], "com.microsoft", num_heads=8)],
          inputs=[value_info("q", FLOAT, [1, "nq", "e"]), ...], outputs=[...],
          opsets={"": 17, "com.microsoft": 1})   -> bytes for onnxruntime.InferenceSession
"""

FLOAT, INT32 = 1, 6  # TensorProto.DataType
IR_VERSION = 8


def _varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, value):
    """One protobuf field: an int as a varint (wire type 0), str/bytes length-delimited (2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def value_info(name, elem_type, dims):
    """ValueInfoProto of a tensor; dims are ints (fixed) or strs (named dynamic sizes)."""
    shape = b"".join(_field(1, _field(1 if isinstance(d, int) else 2, d)) for d in dims)
    tensor = _field(1, elem_type) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor))


def _attribute(name, value):
    """AttributeProto of an int (type 2, field i) or a list of ints (type 7, fields ints)."""
    if isinstance(value, int):
        return _field(1, name) + _field(3, value) + _field(20, 2)
    return _field(1, name) + b"".join(_field(8, v) for v in value) + _field(20, 7)


def initializer(name, array):
    """TensorProto holding a float32 array (dims, data type, name, little-endian raw data)."""
    import numpy as np

    data = np.ascontiguousarray(array, "<f4")
    return (b"".join(_field(1, d) for d in data.shape) + _field(2, FLOAT) + _field(8, name)
            + _field(9, data.tobytes()))


def node(op_type, inputs, outputs, domain="", **int_attributes):
    """NodeProto; "" in ``inputs`` skips an optional input; attributes are ints or int lists."""
    attrs = b"".join(_field(5, _attribute(k, v)) for k, v in int_attributes.items())
    return (b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
            + _field(4, op_type) + attrs + _field(7, domain))


def model(nodes, inputs, outputs, opsets, name="graph", initializers=()):
    """ModelProto bytes: one graph of ``nodes``, with ``opsets`` {domain: version}."""
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, name)
             + b"".join(_field(5, t) for t in initializers)
             + b"".join(_field(11, v) for v in inputs) + b"".join(_field(12, v) for v in outputs))
    imports = b"".join(_field(8, _field(1, d) + _field(2, v)) for d, v in opsets.items())
    return _field(1, IR_VERSION) + imports + _field(7, graph)
