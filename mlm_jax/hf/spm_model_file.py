"""Reading a SentencePiece ``.model`` file without SentencePiece's generated protobuf code.

The file is a serialized ``ModelProto``. ``sentencepiece_model_pb2`` refuses to import
when the installed protobuf runtime is older than the protoc that generated it (e.g.
sentencepiece 0.2.3 needs protobuf 7, Apache Beam caps protobuf below 7), so the few
fields the Hugging Face conversion needs are decoded here from the wire format, with
the defaults ``sentencepiece_model.proto`` declares.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass
class Piece:
    piece: str
    score: float = 0.0
    type: int = 1  # NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, BYTE=6, UNUSED=5


@dataclass
class TrainerSpec:
    model_type: int = 1  # UNIGRAM=1, BPE=2, WORD=3, CHAR=4
    byte_fallback: bool = False
    unk_id: int = 0
    unk_piece: str = "<unk>"


@dataclass
class NormalizerSpec:
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


@dataclass
class ModelFile:
    pieces: list[Piece] = field(default_factory=list)
    trainer_spec: TrainerSpec = field(default_factory=TrainerSpec)
    normalizer_spec: NormalizerSpec = field(default_factory=NormalizerSpec)


def read_model_file(data: bytes) -> ModelFile:
    """The pieces, trainer and normalizer settings of a serialized ``ModelProto``."""
    model = ModelFile()
    for number, value in _fields(data):
        if number == 1:
            model.pieces.append(_piece(value))
        elif number == 2:
            model.trainer_spec = _trainer_spec(value)
        elif number == 3:
            model.normalizer_spec = _normalizer_spec(value)
    return model


def _piece(data: bytes) -> Piece:
    piece = Piece("")
    for number, value in _fields(data):
        if number == 1:
            piece.piece = value.decode("utf-8")
        elif number == 2:
            piece.score = struct.unpack("<f", value)[0]
        elif number == 3:
            piece.type = value
    return piece


def _trainer_spec(data: bytes) -> TrainerSpec:
    spec = TrainerSpec()
    for number, value in _fields(data):
        if number == 3:
            spec.model_type = value
        elif number == 35:
            spec.byte_fallback = bool(value)
        elif number == 40:
            spec.unk_id = value
        elif number == 45:
            spec.unk_piece = value.decode("utf-8")
    return spec


def _normalizer_spec(data: bytes) -> NormalizerSpec:
    spec = NormalizerSpec()
    for number, value in _fields(data):
        if number == 2:
            spec.precompiled_charsmap = bytes(value)
        elif number == 3:
            spec.add_dummy_prefix = bool(value)
        elif number == 4:
            spec.remove_extra_whitespaces = bool(value)
        elif number == 5:
            spec.escape_whitespaces = bool(value)
    return spec


def _fields(data: bytes):
    """``(field number, value)`` pairs of one message: ints for varints, raw bytes else."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, position = _varint(data, position)
        elif wire_type == _LENGTH:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated SentencePiece model: a field runs past the end")
            value, position = data[position : position + length], position + length
        elif wire_type in (_FIXED32, _FIXED64):
            size = 4 if wire_type == _FIXED32 else 8
            value, position = data[position : position + size], position + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in a SentencePiece model")
        yield number, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
