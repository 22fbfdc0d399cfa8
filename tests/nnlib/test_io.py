"""Artifacts: round trips, a corpus of hostile files, the serving contract, joblib pins.

Every hostile file must give an :class:`nnlib.ArtifactError` naming the file and the reason,
and the marker file its payload would create must not exist. Where a file carries a live
payload, a control shows that ``joblib.load`` / ``pickle.load`` *would* run it, so the
corpus cannot silently go stale.
"""

from __future__ import annotations

import inspect
import io
import json
import os
import pickle
import random
import warnings
import zlib
from pathlib import Path

import joblib
import joblib.compressor
import joblib.numpy_pickle_compat
import numpy as np
import pytest
from joblib.numpy_pickle import NumpyArrayWrapper, NumpyPickler, NumpyUnpickler

import nnlib
import nnlib.io as nio

LABELS3 = ["a", "b", "c"]


# ---------------------------------------------------------------------------------------
# Helpers


def contract_metadata(input_shape: list[int], output: str, labels: list[str] = LABELS3,
                      **extra) -> dict:
    """Metadata that satisfies the serving contract."""
    return {
        "name": "test-net",
        "version": "1.2.3",
        "input_shape": input_shape,
        "labels": labels,
        "output": output,
        "description": "a test network",
        "dataset": {"name": "none", "split": {"seed": 0, "test_size": 0.25}},
        "metrics": {"test_accuracy": 0.5, "test_loss": 1.25},
        "created": "2026-01-01T00:00:00+00:00",
        **extra,
    }


def every_layer_net() -> nnlib.Sequential:
    """A LogSoftmax network using every layer type but Softmax (see softmax_net)."""
    rng = np.random.default_rng(7)
    return nnlib.Sequential(
        nnlib.Scale(1 / 16),
        nnlib.Conv1D(2, 4, 3, stride=2, bias=False, rng=rng),  # (6, 4) -> (3, 3)
        nnlib.LeakyReLU(alpha=0.2),
        nnlib.MaxPool1D(2, stride=1),  # -> (2, 3)
        nnlib.Flatten(),  # -> 6
        nnlib.Linear(6, 5, bias=False, rng=rng), nnlib.TanH(),
        nnlib.Linear(5, 5, rng=rng), nnlib.Sigmoid(),
        nnlib.Linear(5, 5, rng=rng), nnlib.StableSigmoid(),
        nnlib.Sequential(nnlib.Linear(5, 5, rng=rng), nnlib.Softplus()),
        nnlib.Linear(5, 4, rng=rng), nnlib.ReLU(),
        nnlib.Linear(4, 3, rng=rng),
        nnlib.LogSoftmax(),
    )


EVERY_LAYER_SHAPE = [6, 4]


def softmax_net(dtype=np.float32) -> nnlib.Sequential:
    rng = np.random.default_rng(3)
    return nnlib.Sequential(nnlib.Scale(0.5), nnlib.Linear(4, 3, dtype=dtype, rng=rng),
                            nnlib.Softmax())


def small_artifact(path: Path, compress: int = 0) -> Path:
    """A small valid artifact (about 1 KB), for the byte-by-byte tests."""
    net = nnlib.Sequential(nnlib.Scale(0.5), nnlib.Linear(4, 3, rng=1),
                           nnlib.Linear(3, 3, bias=False, rng=2), nnlib.LogSoftmax())
    return nnlib.save(path, net, contract_metadata([4], "log_softmax"), compress=compress)


def payload_of(model: nnlib.Sequential, metadata: dict, **changes) -> dict:
    """The dict nnlib.save writes, with ``changes`` applied and a digest that matches them,
    so that a crafted file fails exactly at the check under test."""
    architecture = changes.pop("architecture", nio._describe(model.modules, "architecture"))
    parameters = changes.pop("parameters", dict(model.parameters()))
    version = changes.pop("format_version", nio.FORMAT_VERSION)
    payload = {
        "format": nio.FORMAT, "format_version": version, "architecture": architecture,
        "parameters": parameters, "metadata": metadata,
        "sha256": nio._digest(version, architecture, parameters, metadata),
    }
    payload.update(changes)
    return payload


def dump(payload: object, path: Path, compress: int | tuple = 0) -> Path:
    joblib.dump(payload, path, compress=compress, protocol=4)
    return path


class Touch:
    """Pickles as a call to ``os.system("touch <marker>")``: a real code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def refused(path: Path, *reason_parts: str, **load_kwargs) -> nnlib.ArtifactError:
    """Load ``path``, expect an ArtifactError naming the file and every part of the reason."""
    with pytest.raises(nnlib.ArtifactError) as info:
        nnlib.load(path, **load_kwargs)
    error = info.value
    assert isinstance(error, ValueError)
    assert str(path) in str(error)
    for part in reason_parts:
        assert part in error.reason, (part, error.reason)
    return error


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def strict_json(value: object) -> str:
    # json keeps what == forgets: 1 vs 1.0 vs true, and key order.
    return json.dumps(value)


# ---------------------------------------------------------------------------------------
# Round trips


def test_every_layer_type_is_covered_by_the_round_trip_nets():
    types = {type(m).__name__ for m in every_layer_net().modules}
    types |= {type(m).__name__ for m in every_layer_net().modules[11].modules}
    types |= {type(m).__name__ for m in softmax_net().modules}
    assert types == set(nio.LAYERS) | {"Sequential"}


@pytest.mark.parametrize("compress", [0, 3])
def test_round_trip_is_bit_identical(tmp_path, compress):
    net = every_layer_net()
    metadata = contract_metadata(EVERY_LAYER_SHAPE, "log_softmax",
                                 extra={"nested": [1, 1.0, True, None, "é", {"k": []}]})
    path = nnlib.save(tmp_path / "net.joblib", net, metadata, compress=compress)
    loaded = nnlib.load(path)

    assert strict_json(loaded.metadata) == strict_json(metadata)
    assert loaded.metadata == metadata
    assert repr(loaded.model) == repr(net)
    original, restored = net.parameters(), loaded.model.parameters()
    assert list(restored) == list(original)
    for name, value in original.items():
        assert restored[name].dtype == value.dtype
        assert restored[name].tobytes() == value.tobytes(), name
    X = np.random.default_rng(0).uniform(0, 16, (32, *EVERY_LAYER_SHAPE)).astype(np.float32)
    expected, got = net.predict(X), loaded.model.predict(X)
    assert got.dtype == expected.dtype == np.float32
    assert got.tobytes() == expected.tobytes()


def test_round_trip_keeps_float64_layers_and_softmax(tmp_path):
    net = softmax_net(np.float64)
    path = nnlib.save(tmp_path / "f64.joblib", net, contract_metadata([4], "softmax"))
    loaded = nnlib.load(path).model
    assert loaded.modules[1].weight.dtype == np.float64
    X = np.random.default_rng(1).normal(size=(5, 4))
    assert loaded.predict(X).tobytes() == net.predict(X).tobytes()


def test_loaded_parameters_are_live_and_independent(tmp_path):
    net = softmax_net()
    path = nnlib.save(tmp_path / "a.joblib", net, contract_metadata([4], "softmax"))
    first, second = nnlib.load(path).model, nnlib.load(path).model
    first.parameters()["1.weight"][...] = 0
    assert not np.any(first.modules[1].weight)
    assert np.array_equal(second.modules[1].weight, net.modules[1].weight)


def test_file_holds_plain_data_only(tmp_path):
    # Our own fresh file, so joblib.load is safe here: inspect what save() wrote.
    net = nnlib.Sequential(nnlib.Linear(4, 3, rng=0),
                           nnlib.Sequential(nnlib.LeakyReLU(0.5)), nnlib.Softmax())
    path = nnlib.save(tmp_path / "a.joblib", net, contract_metadata([4], "softmax"))
    payload = joblib.load(path)
    assert set(payload) == {"format", "format_version", "architecture", "parameters",
                            "metadata", "sha256"}
    assert payload["format_version"] == nnlib.io.FORMAT_VERSION
    assert payload["architecture"] == [
        {"type": "Linear", "config": {"in_features": 4, "out_features": 3, "bias": True,
                                      "dtype": "float32"}},
        {"type": "Sequential",
         "config": {"modules": [{"type": "LeakyReLU", "config": {"alpha": 0.5}}]}},
        {"type": "Softmax", "config": {}},
    ]
    assert {k: type(v) for k, v in payload["parameters"].items()} == {
        "0.weight": np.ndarray, "0.bias": np.ndarray}


def test_metadata_tuples_and_numpy_scalars_become_plain(tmp_path):
    metadata = contract_metadata([4], "softmax", extra={"t": (1, 2), "n": np.float32(0.5),
                                                         "i": np.int64(3)})
    metadata["input_shape"] = (4,)
    path = nnlib.save(tmp_path / "a.joblib", softmax_net(), metadata)
    loaded = nnlib.load(path).metadata
    assert loaded["input_shape"] == [4]
    assert strict_json(loaded["extra"]) == strict_json({"t": [1, 2], "n": 0.5, "i": 3})


@pytest.mark.parametrize("bad, reason", [
    ({"f": float("nan")}, "not finite"),
    ({"o": object()}, "object is not plain data"),
    ({1: "x"}, "is not a string"),
    ({"a": np.zeros(2)}, "ndarray is not plain data"),
])
def test_save_refuses_metadata_that_is_not_plain(tmp_path, bad, reason):
    path = tmp_path / "a.joblib"
    with pytest.raises(nnlib.ArtifactError, match=reason):
        nnlib.save(path, softmax_net(), contract_metadata([4], "softmax", extra=bad))
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_unknown_layers_and_leaves_the_old_file(tmp_path):
    class Custom(nnlib.ReLU):
        pass

    class Linear(nnlib.Module):  # an impostor with a table name
        pass

    path = nnlib.save(tmp_path / "a.joblib", softmax_net(), contract_metadata([4], "softmax"))
    before = path.read_bytes()
    for layer in (Custom(), Linear()):
        with pytest.raises(nnlib.ArtifactError, match="cannot save"):
            nnlib.save(path, nnlib.Sequential(layer, nnlib.Softmax()),
                       contract_metadata([4], "softmax"))
    with pytest.raises(nnlib.ArtifactError, match="must be a Sequential"):
        nnlib.save(path, nnlib.Linear(4, 3), contract_metadata([4], "softmax"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.joblib"]  # no temporary left


# ---------------------------------------------------------------------------------------
# Hostile files with a live payload: each is refused, and the control proves it is live.


def write_raw_payload(path: Path, marker: Path) -> Path:
    return dump({"model": Touch(marker)}, path)


def write_zlib_payload(path: Path, marker: Path) -> Path:
    return dump({"model": Touch(marker)}, path, compress=3)


def write_gzip_payload(path: Path, marker: Path) -> Path:
    return dump({"model": Touch(marker)}, path, compress=("gzip", 3))


def write_payload_in_metadata(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["metadata"]["extra"] = {"deep": [{"x": Touch(marker)}]}
    return dump(payload, path)


def write_object_array(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["parameters"]["1.bias"] = np.array([Touch(marker), 1, 2], dtype=object)
    return dump(payload, path)


def write_plain_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Touch(marker), protocol=4))
    return path


def write_plain_pickle_protocol_2(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(Touch(marker), protocol=2))
    return path


def write_legacy_zfile(path: Path, marker: Path) -> Path:
    # joblib < 0.10 "z-file": joblib.load still unpickles it with the full unpickler.
    with open(path, "wb") as handle:
        joblib.numpy_pickle_compat.write_zfile(handle, pickle.dumps(Touch(marker), 2))
    return path


def write_legacy_side_file(path: Path, marker: Path) -> Path:
    # joblib <= 0.9: the pickle names a side .npy file, which joblib.load reads with
    # numpy.load(allow_pickle=True): an object array there runs its payload.
    side = path.with_name(path.name + "_01.npy")
    np.save(side, np.array([Touch(marker)], dtype=object), allow_pickle=True)
    wrapper = joblib.numpy_pickle_compat.NDArrayWrapper(side.name, np.ndarray)
    path.write_bytes(pickle.dumps({"model": wrapper}, protocol=4))
    return path


LIVE_PAYLOADS = {
    "os.system via joblib.dump": (write_raw_payload, "global posix.system is not allowed"),
    "os.system via joblib.dump, zlib-compressed": (write_zlib_payload,
                                                   "global posix.system is not allowed"),
    "os.system via joblib.dump, gzip-compressed": (write_gzip_payload,
                                                   "gzip compression is not supported"),
    "payload nested inside metadata": (write_payload_in_metadata,
                                       "global posix.system is not allowed"),
    "object-dtype array": (write_object_array, "array dtype ('O8', False, True)"),
    "plain pickle file": (write_plain_pickle, "global posix.system is not allowed"),
    "plain pickle, protocol 2": (write_plain_pickle_protocol_2, "pickle protocol 02"),
    "legacy z-file (joblib < 0.10)": (write_legacy_zfile, "legacy joblib format"),
    "legacy NDArrayWrapper side file": (write_legacy_side_file, "legacy joblib format"),
}


@pytest.mark.parametrize("case", LIVE_PAYLOADS)
def test_live_payload_is_refused_and_never_runs(tmp_path, marker, case):
    write, reason = LIVE_PAYLOADS[case]
    path = write(tmp_path / "evil.joblib", marker)
    refused(path, reason)
    assert not marker.exists()

    # Control: the unrestricted loaders run the payload, so the file above is a real attack.
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # joblib on legacy files
        if handle.read(2) == b"\x80\x02":
            handle.seek(0)
            pickle.load(handle)
        else:
            joblib.load(path)
    assert marker.exists(), "the payload is not live: the test above proves nothing"


# ---------------------------------------------------------------------------------------
# Hostile or broken files without a payload.


def test_random_bytes(tmp_path):
    for seed in range(20):
        path = tmp_path / f"random{seed}.joblib"
        path.write_bytes(random.Random(seed).randbytes(4096))
        refused(path)
    # Random bytes behind each header we recognise, to reach the deeper checks.
    for header in (b"\x80\x04", b"\x80\x04\x95", b"\x78\x9c", b"ZF"):
        path = tmp_path / "header.joblib"
        path.write_bytes(header + random.Random(0).randbytes(4096))
        refused(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.joblib"
    path.write_bytes(b"")
    refused(path, "file is empty")


def test_missing_file_and_directory(tmp_path):
    refused(tmp_path / "missing.joblib", "cannot read the file")
    refused(tmp_path, "not a regular file")


def test_fifo_does_not_hang(tmp_path):
    path = tmp_path / "fifo.joblib"
    os.mkfifo(path)
    refused(path, "not a regular file")


@pytest.mark.parametrize("compress", [0, 3])
def test_every_truncation_is_refused(tmp_path, compress):
    path = small_artifact(tmp_path / "ok.joblib", compress)
    data = path.read_bytes()
    accepted = []
    with open(path, "r+b") as handle:
        for size in reversed(range(len(data))):
            handle.truncate(size)
            handle.flush()
            try:
                nnlib.load(path)
            except nnlib.ArtifactError:
                continue
            accepted.append(size)
    assert accepted == []


def accepted_corruptions(path: Path, masks: tuple[int, ...]) -> list[tuple[int, int]]:
    """Change each byte of ``path`` in place by each mask; return the changes that load.

    Patches the file with pwrite and restores it, so the loop costs two syscalls per
    change rather than a new file.
    """
    data = path.read_bytes()
    accepted = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for index in range(len(data)):
            for mask in masks:
                os.pwrite(fd, bytes([data[index] ^ mask]), index)
                try:
                    nnlib.load(path)
                except nnlib.ArtifactError as error:
                    assert str(path) in str(error)
                else:
                    accepted.append((index, mask))
            os.pwrite(fd, data[index : index + 1], index)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    return accepted


def test_every_flipped_byte_is_refused_uncompressed(tmp_path):
    # Every byte, three masks: the lowest and highest bit alone, and all bits. This reaches
    # the bytes no digest covers: pickle frame lengths, the PROTO version, joblib's array
    # padding and wrapper flags (NEWTRUE/NEWFALSE differ by one bit).
    path = small_artifact(tmp_path / "ok.joblib")
    assert accepted_corruptions(path, (0x01, 0x80, 0xFF)) == []


def test_every_complemented_byte_is_refused_compressed(tmp_path):
    # Deflate has redundant bits (the padding of its last byte, some Huffman header bits):
    # flipping one of those alone can inflate to the very same stream, which the sha256
    # then accepts because the content is intact. Replacing a whole byte is always caught.
    path = small_artifact(tmp_path / "ok.joblib", compress=3)
    assert accepted_corruptions(path, (0xFF,)) == []


def test_flipped_parameter_byte_names_the_digest(tmp_path):
    path = small_artifact(tmp_path / "a.joblib")
    data = bytearray(path.read_bytes())
    data[data.index(b"a test network")] ^= 0x01  # "a" -> "`": the pickle stays well formed
    path.write_bytes(data)
    refused(path, "sha256 mismatch")


def test_unknown_layer_type(tmp_path, marker):
    net = softmax_net()
    for kind in ("Evil", "os.system", "__import__", "Module", "Sequential.modules"):
        architecture = nio._describe(net.modules, "architecture")
        architecture[0] = {"type": kind, "config": {}}
        path = dump(payload_of(net, contract_metadata([4], "softmax"),
                               architecture=architecture), tmp_path / "unknown.joblib")
        refused(path, f"unknown layer type {kind!r}")
    assert not marker.exists()


@pytest.mark.parametrize("config, reason", [
    ({"in_features": 4, "out_features": 3, "bias": True, "dtype": "object"}, "dtype"),
    ({"in_features": 4, "out_features": 3, "bias": 1, "dtype": "float32"}, "bias=1"),
    ({"in_features": 4, "out_features": 3, "bias": True}, "must have keys"),
    ({"in_features": 4, "out_features": 3, "bias": True, "dtype": "float32", "x": 1},
     "must have keys"),
    # A config that would make the constructor allocate 4 TB is caught by the shapes.
    ({"in_features": 10**6, "out_features": 10**6, "bias": True, "dtype": "float32"},
     "the architecture says float32[1000000, 1000000]"),
])
def test_bad_layer_config(tmp_path, config, reason):
    net = softmax_net()
    architecture = nio._describe(net.modules, "architecture")
    architecture[1]["config"] = config
    path = dump(payload_of(net, contract_metadata([4], "softmax"),
                           architecture=architecture), tmp_path / "config.joblib")
    refused(path, reason)


class LyingPickler(NumpyPickler):
    """joblib's own pickler, declaring a shape other than the bytes it writes."""

    shape: tuple = (10**12,)

    def _create_array_wrapper(self, array):
        wrapper = super()._create_array_wrapper(array)
        wrapper.shape = self.shape
        return wrapper


def lying_artifact(path: Path, shape: tuple) -> Path:
    LyingPickler.shape = shape
    with open(path, "wb") as handle:
        LyingPickler(handle, protocol=4).dump(payload_of(softmax_net(),
                                                         contract_metadata([4], "softmax")))
    return path


def test_declared_shape_of_10_to_the_12_elements(tmp_path):
    path = lying_artifact(tmp_path / "huge.joblib", (10**12,))
    refused(path, "4000000000000 bytes, more than the limit")
    path = lying_artifact(tmp_path / "huge2.joblib", (10**6, 10**6))
    refused(path, "more than the limit")


def test_declared_shape_beyond_the_file(tmp_path):
    path = lying_artifact(tmp_path / "long.joblib", (10**6,))  # 4 MB < limit, not in file
    refused(path, "the file has")


def test_negative_shape(tmp_path):
    path = lying_artifact(tmp_path / "neg.joblib", (-1,))
    refused(path, "not a tuple of non-negative ints")


def test_unsupported_format_version(tmp_path):
    for version in (0, 2, 99, "1", 1.0):
        path = dump(payload_of(softmax_net(), contract_metadata([4], "softmax"),
                               format_version=version), tmp_path / "v.joblib")
        refused(path, "unsupported format version")


def test_wrong_digest_and_layout(tmp_path):
    good = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    refused(dump({**good, "sha256": "0" * 64}, tmp_path / "a.joblib"), "sha256 mismatch")
    refused(dump({**good, "extra": 1}, tmp_path / "b.joblib"), "top level must be")
    refused(dump([good["metadata"]], tmp_path / "c.joblib"), "top level must be")
    refused(dump({**good, "format": "other"}, tmp_path / "d.joblib"), "format 'other'")
    parameters = dict(good["parameters"])
    parameters["9.weight"] = np.zeros(2, np.float32)
    refused(dump(payload_of(softmax_net(), good["metadata"], parameters=parameters),
                 tmp_path / "e.joblib"), "do not match the architecture")
    parameters = dict(softmax_net().parameters())
    parameters["1.bias"] = np.full(3, np.nan, np.float32)
    refused(dump(payload_of(softmax_net(), good["metadata"], parameters=parameters),
                 tmp_path / "f.joblib"), "NaN or infinity")


def craft(path: Path, opcodes: bytes) -> Path:
    """A protocol-4 pickle whose opcodes sit in one frame, as pickle writes them."""
    path.write_bytes(b"\x80\x04" + pickle.FRAME + len(opcodes).to_bytes(8, "little") + opcodes)
    return path


def test_allowed_globals_cannot_be_misused(tmp_path):
    ndarray = b"\x8c\x05numpy\x8c\x07ndarray\x93"
    dtype = b"\x8c\x05numpy\x8c\x05dtype\x93"
    wrapper = b"\x8c\x13joblib.numpy_pickle\x8c\x11NumpyArrayWrapper\x93"
    cases = {
        # numpy.ndarray((10**12,)) would allocate: calling it is refused.
        "ndarray_call": (ndarray + b"\x8a\x06\x00\x10\xa5\xd4\xe8\x00\x85\x85R.",
                         "calling ndarray is not allowed"),
        "dtype_object": (dtype + b"\x8c\x02O8\x89\x88\x87R.", "array dtype"),
        "dtype_structured": (dtype + b"\x8c\x02f4\x89\x88\x87R(K\x03\x8c\x01|"
                             b"\x8c\x01a\x85}NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb.",
                             "dtype state"),
        "wrapper_args": (wrapper + b"K\x01\x85\x81.", "creating NumpyArrayWrapper"),
        "newobj_ndarray": (ndarray + b")\x81.", "creating ndarray"),
        "wrapper_extra_key": (wrapper + b")\x81}\x8c\x04evil\x88sb.",
                              "array wrapper state has keys"),
        "build_on_class": (ndarray + b"}b.", "setting the state of type"),
    }
    for name, (opcodes, reason) in cases.items():
        refused(craft(tmp_path / f"{name}.joblib", opcodes), reason)


def test_code_paths_of_pickle_are_closed(tmp_path, marker):
    cases = {
        "persid": (b"P1\n.", "PERSID is not allowed"),
        "binpersid": (b"K\x01Q.", "BINPERSID is not allowed"),
        "ext1": (b"\x82\x01.", "EXT1 is not allowed"),
        "inst": (b"(ios\nsystem\n.", "INST is not allowed"),
        "obj": (b"(\x8c\x02os\x8c\x06system\x93o.", "global os.system"),
        "global_opcode": (b"cbuiltins\neval\n.", "global builtins.eval is not allowed"),
        "newobj_ex": (b")}\x92.", "NEWOBJ_EX is not allowed"),
        "next_buffer": (b"\x97.", "NEXT_BUFFER is not allowed"),
    }
    for name, (opcodes, reason) in cases.items():
        refused(craft(tmp_path / f"{name}.joblib", opcodes), reason)
    assert not marker.exists()


def test_resource_bombs_are_bounded(tmp_path):
    # Shared references: a list of two references to a list of two... 2**20 leaves in
    # 200 bytes (memo i+1 = [memo i, memo i]).
    bomb = b"]\x94" + b"".join(b"](h" + bytes([i]) + b"h" + bytes([i]) + b"e\x94"
                               for i in range(20)) + b"."
    refused(craft(tmp_path / "dag.joblib", bomb), "more than 100000 values")
    refused(craft(tmp_path / "deep.joblib", b"(" * 100 + b"l" * 100 + b"."),
            "nested deeper than")
    refused(craft(tmp_path / "flood.joblib", b"(" * 300_000 + b"."), "pickle operations")
    # Opcodes outside any frame (a pickle this long is always framed).
    path = tmp_path / "unframed.joblib"
    path.write_bytes(b"\x80\x04" + b"N0" * 10 + b"N.")
    refused(path, "outside a frame")
    # A zlib bomb and an oversized file stop at max_bytes, before inflating further.
    path = tmp_path / "zbomb.joblib"
    path.write_bytes(zlib.compress(b"\x80\x04" + bytes(10**6)))
    refused(path, "inflates to more than the limit", max_bytes=100_000)
    refused(small_artifact(tmp_path / "big.joblib"), "more than the limit", max_bytes=100)


def test_lone_surrogate_strings_are_refused(tmp_path):
    metadata = contract_metadata([4], "softmax")
    metadata["description"] = "\ud800"
    with pytest.raises(nnlib.ArtifactError, match="not valid UTF-8"):
        nnlib.save(tmp_path / "a.joblib", softmax_net(), metadata)
    path = dump(payload_of(softmax_net(), {"description": "ok"}), tmp_path / "b.joblib")
    data = path.read_bytes().replace(b"\x8c\x02ok", b"\x8c\x03\xed\xa0\x80")
    path.write_bytes(data)
    refused(path)  # the frame length no longer matches, or the string is refused


def test_a_failed_load_leaves_nothing_behind(tmp_path, marker):
    write_raw_payload(tmp_path / "evil.joblib", marker)
    before = sorted(tmp_path.iterdir())
    for _ in range(3):
        refused(tmp_path / "evil.joblib")
    assert sorted(tmp_path.iterdir()) == before
    # The next good load is unaffected by the failed ones.
    good = nnlib.save(tmp_path / "good.joblib", softmax_net(), contract_metadata([4],
                                                                                 "softmax"))
    assert nnlib.load(good).metadata["name"] == "test-net"


# ---------------------------------------------------------------------------------------
# The serving contract


def saved_without_contract(tmp_path: Path, net, metadata) -> Path:
    return nnlib.save(tmp_path / "net.joblib", net, metadata, check_contract=False)


@pytest.mark.parametrize("net, metadata, reason", [
    (softmax_net(), contract_metadata([4], "log_softmax"), "ends in Softmax, not LogSoftmax"),
    (every_layer_net(), contract_metadata(EVERY_LAYER_SHAPE, "softmax"),
     "ends in LogSoftmax, not Softmax"),
    (nnlib.Sequential(nnlib.Linear(4, 3, rng=0)), contract_metadata([4], "softmax"),
     "ends in Linear"),
    (softmax_net(), contract_metadata([4], "probabilities"), "must be one of"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "b", "c", "d"]),
     "expected (1, 4) for 4 labels"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "b"]),
     "expected (1, 2) for 2 labels"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "a", "b"]), "distinct"),
    (softmax_net(), contract_metadata([4], "softmax", labels=[0, 1, 2]), "strings"),
    (softmax_net(), contract_metadata([5], "softmax"), "dry forward on zeros"),
    (softmax_net(), contract_metadata([0], "softmax"), "input_shape"),
    (softmax_net(), {k: v for k, v in contract_metadata([4], "softmax").items()
                     if k not in ("created", "metrics")}, "missing keys ['metrics', 'created']"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "name": ""}, "name"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "dataset": "digits"}, "dataset"),
])
def test_contract_is_checked_by_save_load_and_validate(tmp_path, net, metadata, reason):
    with pytest.raises(nnlib.ArtifactError) as info:
        nnlib.save(tmp_path / "refused.joblib", net, metadata)
    assert reason in info.value.reason
    assert not (tmp_path / "refused.joblib").exists()

    path = saved_without_contract(tmp_path, net, metadata)
    refused(path, reason)
    artifact = nnlib.load(path, check_contract=False)  # structure alone is fine
    with pytest.raises(nnlib.ArtifactError, match=r"dry forward|ends in|must|missing|labels"):
        nnlib.validate(artifact)
    with pytest.raises(nnlib.ArtifactError, match=r"somewhere\.joblib"):
        nnlib.validate(artifact, path="somewhere.joblib")


def test_non_finite_dry_forward_is_refused(tmp_path):
    net = softmax_net()
    net.modules[1].parameters()["bias"][...] = np.finfo(np.float32).max
    net = nnlib.Sequential(net.modules[1], nnlib.Scale(1e30), nnlib.Softmax())
    path = saved_without_contract(tmp_path, net, contract_metadata([4], "softmax"))
    refused(path, "NaN or infinity")


def test_validate_accepts_the_contract_nets(tmp_path):
    nnlib.validate(nnlib.Artifact(softmax_net(), contract_metadata([4], "softmax")))
    nnlib.validate(nnlib.Artifact(every_layer_net(),
                                  contract_metadata(EVERY_LAYER_SHAPE, "log_softmax")))


# ---------------------------------------------------------------------------------------
# Pins: the joblib and pickle internals nnlib.io relies on. A joblib upgrade that changes
# one of them must fail here, loudly, before it weakens or breaks the loader.


def test_pin_joblib_version_range():
    major, minor = (int(part) for part in joblib.__version__.split(".")[:2])
    assert (major, minor) == (1, 6), "re-run this file and re-check nnlib.io, then re-pin"


def test_pin_numpy_unpickler_is_the_pure_python_unpickler():
    # The dispatch-table overrides only work on pickle's pure-Python _Unpickler.
    assert issubclass(NumpyUnpickler, pickle._Unpickler)
    assert NumpyUnpickler.dispatch[pickle.BUILD[0]] is NumpyUnpickler.load_build
    assert list(inspect.signature(NumpyUnpickler.__init__).parameters) == [
        "self", "filename", "file_handle", "ensure_native_byte_order", "mmap_mode"]
    for opcode in (pickle.REDUCE, pickle.NEWOBJ, pickle.BUILD, pickle.FRAME):
        assert nio._RestrictedUnpickler.dispatch[opcode[0]].__qualname__.startswith(
            "_RestrictedUnpickler.")


def test_pin_pickle_reads_through_file_read_and_dispatch():
    # _Unpickler.load builds its _Unframer from self._file_read/_file_readline and looks
    # opcodes up in self.dispatch: the loader replaces all three per instance.
    source = inspect.getsource(pickle._Unpickler.load)
    assert "_Unframer(self._file_read, self._file_readline)" in source
    assert "dispatch = self.dispatch" in source
    assert "self._unframer.load_frame(frame_size)" in inspect.getsource(
        pickle._Unpickler.load_frame)
    # The frame check assumes pickle frames every chunk of at least 4 bytes.
    assert pickle._Framer._FRAME_SIZE_MIN == 4


def test_pin_array_wrapper_state_and_build():
    wrapper = NumpyArrayWrapper(np.ndarray, (2,), "C", np.dtype("<f4"))
    assert set(vars(wrapper)) == nio._RestrictedUnpickler._WRAPPER_KEYS
    # No __setstate__: pickle's BUILD sets the checked state dict as the instance __dict__.
    assert getattr(NumpyArrayWrapper, "__setstate__", None) is None
    assert list(inspect.signature(NumpyArrayWrapper.read).parameters) == [
        "self", "unpickler", "ensure_native_byte_order"]
    assert joblib.numpy_pickle.NUMPY_ARRAY_ALIGNMENT_BYTES == \
        nio._RestrictedUnpickler._ALIGNMENT
    assert np.dtype("<f4").__reduce__()[:2] == (np.dtype, ("f4", False, True))


def test_pin_container_prefixes():
    assert joblib.compressor._ZLIB_PREFIX == nio._ZLIB_MAGIC
    assert joblib.compressor._ZFILE_PREFIX == nio._LEGACY_ZFILE_MAGIC
    assert joblib.compressor._GZIP_PREFIX in nio._OTHER_CONTAINERS


class RecordingUnpickler(nio._RestrictedUnpickler):
    def find_class(self, module, name):
        self.seen.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("compress", [0, 3])
def test_pin_joblib_writes_what_the_loader_reads(tmp_path, compress):
    # Plain joblib.dump of float arrays of every allowed dtype and awkward shapes: the
    # loader reads them back exactly and needs exactly the three allowed globals.
    arrays = {
        "f2": np.arange(5, dtype=np.float16), "f4": np.ones((2, 3, 4), np.float32),
        "f8": np.linspace(0, 1, 7), "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 3), np.float32),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    }
    arrays["fortran"] = np.ascontiguousarray(arrays["fortran"])  # save() writes C order
    path = dump(arrays, tmp_path / "arrays.joblib", compress=compress)
    stream = nio._inflate(path.read_bytes(), nio.DEFAULT_MAX_BYTES)
    unpickler = RecordingUnpickler(io.BytesIO(stream), nio.DEFAULT_MAX_BYTES)
    unpickler.seen = set()
    loaded = unpickler.load()
    assert unpickler.seen == set(nio._RestrictedUnpickler._GLOBALS)
    for name, array in arrays.items():
        assert type(loaded[name]) is np.ndarray
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert loaded[name].tobytes() == array.tobytes()


def test_pin_fortran_order_arrays_are_refused(tmp_path):
    # joblib writes F-ordered arrays with order "F"; save() never does, so load refuses it.
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    path = dump({"a": fortran}, tmp_path / "f.joblib")
    refused(path, "array order 'F' is not allowed")
