"""Artifacts (format 2): round trips, a corpus of hostile files, the serving contract, pins.

Every hostile file must give an :class:`nnlib.ArtifactError` naming the file and the reason,
and the marker file its payload would create must not exist. Where a file carries a live
payload, a control shows that ``joblib.load`` / ``pickle.load`` *would* run it, so the
corpus cannot silently go stale. Every hostile file is built here; none is stored.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import warnings
import zlib
from pathlib import Path

import joblib
import joblib.numpy_pickle_compat
import numpy as np
import pytest

import nnlib
import nnlib.io as nio
from nnlib.architecture import LAYERS, describe
from nnlib.format1 import convert
from nnlib.plain import read_pickle

LABELS3 = ["a", "b", "c"]
TOUCH_REASON = "global posix.system is not allowed"


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
    standardize = nnlib.Standardize(4)
    standardize.fit(rng.normal(3.0, 2.0, size=(32, 6, 4)))
    return nnlib.Sequential(
        nnlib.Scale(1 / 16),
        standardize,  # per channel, the last axis
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


def entries(model: nnlib.Sequential) -> dict:
    """The parameters of ``model`` as format-2 entries."""
    return {name: {"dtype": value.dtype.name, "shape": list(value.shape),
                   "data": value.astype(value.dtype.newbyteorder("<")).tobytes()}
            for name, value in model.parameters().items()}


def digest_of(version: object, architecture: object, parameters: object,
              metadata: object) -> str:
    """The digest nnlib.save would write for this content (any size), or zeros if none can be."""
    try:
        headers = {n: {"dtype": e["dtype"], "shape": e["shape"]} for n, e in parameters.items()}
        data = {n: e["data"] for n, e in parameters.items()}
        return nio._digest(version, architecture, headers, metadata, data,
                           nnlib.Limits(metadata_bytes=2**40))
    except Exception:
        return "0" * 64


def payload_of(model: nnlib.Sequential, metadata: object, **changes) -> dict:
    """The dict nnlib.save writes, with ``changes`` applied and a digest that matches them,
    so that a crafted file fails exactly at the check under test."""
    architecture = changes.pop("architecture", describe(model.modules))
    parameters = changes.pop("parameters", entries(model))
    version = changes.pop("format_version", nio.FORMAT_VERSION)
    payload = {"format": nio.FORMAT, "format_version": version, "architecture": architecture,
               "parameters": parameters, "metadata": metadata}
    if "sha256" not in changes:  # a shared-reference bomb has no digest worth computing
        payload["sha256"] = digest_of(version, architecture, parameters, metadata)
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
    assert len(error.reason) <= nnlib.DEFAULT_LIMITS.reason_length
    assert error.reason.isprintable(), error.reason
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
    types |= {type(m).__name__ for m in every_layer_net().modules[12].modules}
    types |= {type(m).__name__ for m in softmax_net().modules}
    assert types == set(LAYERS) | {"Sequential"}


@pytest.mark.parametrize("compress", [0, 3])
def test_round_trip_is_bit_identical(tmp_path, compress):
    net = every_layer_net()
    metadata = contract_metadata(EVERY_LAYER_SHAPE, "log_softmax",
                                 extra={"nested": [1, 1.0, True, None, "é", {"k": []}]})
    path = nnlib.save(tmp_path / "net.joblib", net, metadata, compress=compress)
    loaded = nnlib.load(path)

    assert strict_json(loaded.metadata) == strict_json(metadata)
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
    assert first.modules[1].weight.flags.writeable


def test_file_holds_plain_data_only(tmp_path):
    # A pickle of plain data needs no global: the standard unpickler refusing all of them
    # reads it, and so does our scan.
    net = nnlib.Sequential(nnlib.Linear(4, 3, rng=0),
                           nnlib.Sequential(nnlib.LeakyReLU(0.5)), nnlib.Softmax())
    path = nnlib.save(tmp_path / "a.joblib", net, contract_metadata([4], "softmax"))

    class NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise AssertionError(f"the artifact names {module}.{name}")

    with open(path, "rb") as handle:
        payload = NoGlobals(handle).load()
    assert set(payload) == {"format", "format_version", "architecture", "parameters",
                            "metadata", "sha256"}
    assert payload["format_version"] == 2
    assert payload["architecture"] == [
        {"type": "Linear", "config": {"in_features": 4, "out_features": 3, "bias": True,
                                      "dtype": "float32"}},
        {"type": "Sequential",
         "config": {"modules": [{"type": "LeakyReLU", "config": {"alpha": 0.5}}]}},
        {"type": "Softmax", "config": {}},
    ]
    assert payload["parameters"]["0.weight"] == {
        "dtype": "float32", "shape": [4, 3],
        "data": net.modules[0].weight.astype("<f4").tobytes()}


def test_metadata_tuples_and_numpy_scalars_become_plain(tmp_path):
    metadata = contract_metadata([4], "softmax", extra={"t": (1, 2), "n": np.float32(0.5),
                                                         "i": np.int64(3), "b": np.bool_(1)})
    metadata["input_shape"] = (4,)
    path = nnlib.save(tmp_path / "a.joblib", softmax_net(), metadata)
    loaded = nnlib.load(path).metadata
    assert loaded["input_shape"] == [4]
    assert strict_json(loaded["extra"]) == strict_json({"t": [1, 2], "n": 0.5, "i": 3,
                                                        "b": True})


def test_validate_returns_plain_metadata():
    metadata = contract_metadata((4,), "softmax", extra={"n": np.float64(2.0)})
    artifact = nnlib.validate(nnlib.Artifact(softmax_net(), metadata))
    assert artifact.metadata["input_shape"] == [4]
    assert type(artifact.metadata["extra"]["n"]) is float
    assert set(nnlib.OUTPUT_HEADS) == {"softmax", "log_softmax"}
    with pytest.raises(TypeError):
        nnlib.OUTPUT_HEADS["probabilities"] = nnlib.Softmax  # read-only


@pytest.mark.parametrize("bad, reason", [
    ({"f": float("nan")}, "not finite"),
    ({"o": object()}, "object is not plain data"),
    ({1: "x"}, "is not a string"),
    ({"a": np.zeros(2)}, "ndarray is not plain data"),
    ({"b": b"xy"}, "bytes is not plain data"),
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
    with pytest.raises(nnlib.ArtifactError, match="must be a non-empty Sequential"):
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


def write_payload_in_architecture(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["architecture"][0]["config"]["factor"] = Touch(marker)
    return dump(payload, path)


def write_payload_as_parameter_data(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["parameters"]["1.bias"]["data"] = Touch(marker)
    return dump(payload, path, compress=3)


def write_payload_as_digest(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["sha256"] = Touch(marker)  # the last value of the file
    return dump(payload, path)


def write_object_array(path: Path, marker: Path) -> Path:
    payload = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    payload["parameters"]["1.bias"]["data"] = np.array([Touch(marker), 1, 2], dtype=object)
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
    "os.system via joblib.dump": (write_raw_payload, TOUCH_REASON),
    "os.system via joblib.dump, zlib-compressed": (write_zlib_payload, TOUCH_REASON),
    "os.system via joblib.dump, gzip-compressed": (write_gzip_payload,
                                                   "gzip compression is not supported"),
    "payload nested inside metadata": (write_payload_in_metadata, TOUCH_REASON),
    "payload as a layer config value": (write_payload_in_architecture, TOUCH_REASON),
    "payload as parameter data, zlib": (write_payload_as_parameter_data, TOUCH_REASON),
    "payload as the digest": (write_payload_as_digest, TOUCH_REASON),
    "object-dtype array": (write_object_array, "numpy arrays pickled as joblib objects"),
    "plain pickle file": (write_plain_pickle, TOUCH_REASON),
    "plain pickle, protocol 2": (write_plain_pickle_protocol_2, "pickle protocol 02"),
    "legacy z-file (joblib < 0.10)": (write_legacy_zfile, "legacy joblib format"),
    "legacy NDArrayWrapper side file": (
        write_legacy_side_file, "global joblib.numpy_pickle_compat.NDArrayWrapper is not"),
}


@pytest.mark.parametrize("case", LIVE_PAYLOADS)
def test_live_payload_is_refused_and_never_runs(tmp_path, marker, case):
    write, reason = LIVE_PAYLOADS[case]
    path = write(tmp_path / "evil.joblib", marker)
    refused(path, reason)
    assert not marker.exists()
    with pytest.raises(nnlib.ArtifactError):  # nor does converting it
        convert(path, tmp_path / "converted.joblib")
    assert not marker.exists() and not (tmp_path / "converted.joblib").exists()

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
    # the bytes no digest covers: pickle frame lengths, the PROTO version, memo indices.
    path = small_artifact(tmp_path / "ok.joblib")
    assert accepted_corruptions(path, (0x01, 0x80, 0xFF)) == []


def test_every_complemented_byte_is_refused_compressed(tmp_path):
    # Deflate has redundant bits (the padding of its last byte, some Huffman header bits):
    # flipping one of those alone can inflate to the very same stream, which the sha256
    # then accepts because the content is intact. Replacing a whole byte is always caught.
    path = small_artifact(tmp_path / "ok.joblib", compress=3)
    assert accepted_corruptions(path, (0xFF,)) == []


def test_flipped_metadata_byte_names_the_digest(tmp_path):
    path = small_artifact(tmp_path / "a.joblib")
    data = bytearray(path.read_bytes())
    data[data.index(b"a test network")] ^= 0x01  # "a" -> "`": the pickle stays well formed
    path.write_bytes(data)
    refused(path, "sha256 mismatch")


def test_unknown_layer_type(tmp_path, marker):
    net = softmax_net()
    for kind in ("Evil", "os.system", "__import__", "Module", "Sequential.modules"):
        architecture = describe(net.modules)
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
    architecture = describe(net.modules)
    architecture[1]["config"] = config
    path = dump(payload_of(net, contract_metadata([4], "softmax"),
                           architecture=architecture), tmp_path / "config.joblib")
    refused(path, reason)


def with_entry(name: str, **entry) -> dict:
    """The parameters of softmax_net with entry ``name`` changed."""
    parameters = entries(softmax_net())
    parameters[name] = {**parameters[name], **entry}
    return parameters


@pytest.mark.parametrize("parameters, reason", [
    (with_entry("1.bias", data=b"\x00" * 8), "8 bytes of data, but float32 [3] needs 12"),
    (with_entry("1.bias", data=b"\x00" * 16), "16 bytes of data, but float32 [3] needs 12"),
    (with_entry("1.bias", shape=[10**12]), "shape entry 1000000000000 is not a size in [0, "),
    (with_entry("1.bias", shape=[10**6]), "needs 4000000"),
    (with_entry("1.bias", shape=[-1]), "shape entry -1 is not a size"),
    (with_entry("1.bias", shape=[2**62, 2**62]), "shape entry 4611686018427387904 is not"),
    (with_entry("1.bias", shape=[1] * 9), "shape <list of 9> is not a list of at most 8 sizes"),
    (with_entry("1.bias", shape=(3,)), "pickle opcode TUPLE1 is not allowed"),
    (with_entry("1.bias", shape=[3.0]), "shape entry 3.0 is not a size"),
    (with_entry("1.bias", shape="3"), "shape '3' is not a list"),
    (with_entry("1.bias", dtype=">f4"), "dtype '>f4' is not one of"),
    (with_entry("1.bias", dtype="O"), "dtype 'O' is not one of"),
    (with_entry("1.bias", dtype="V8"), "dtype 'V8' is not one of"),
    (with_entry("1.bias", dtype="float64", data=bytes(24)), "the architecture says float32[3]"),
    (with_entry("1.bias", data="\x00" * 12), "data is '\\x00"),
    (with_entry("1.bias", data=[0] * 12), "data is <list of 12>, not bytes"),
    (with_entry("1.bias", extra=1), "must be {'dtype', 'shape', 'data'}"),
    (with_entry("1.bias", data=b"\x00\x00\xc0\x7f" * 3), "NaN or infinity"),
    ({k: v for k, v in entries(softmax_net()).items() if k != "1.bias"},
     "parameter '1.bias' is missing from the file"),
    ({**entries(softmax_net()), "9.weight": {"dtype": "float32", "shape": [0], "data": b""}},
     "parameter '9.weight' is not in the architecture"),
    ([entries(softmax_net())], "parameters must be a dict"),
])
def test_bad_parameter_entry(tmp_path, parameters, reason):
    path = dump(payload_of(softmax_net(), contract_metadata([4], "softmax"),
                           parameters=parameters), tmp_path / "p.joblib")
    refused(path, reason)


def test_duplicate_parameter_is_refused(tmp_path):
    # A dict given one key twice keeps the last value without a word. Write "1.bias" and a
    # same-length "1.biaz", rename the second in the stream, and sign what the dict becomes.
    net = softmax_net()
    parameters = entries(net)
    evil = {"dtype": "float32", "shape": [3], "data": b"\x01" * 12}
    signed = payload_of(net, contract_metadata([4], "softmax"),
                        parameters={**parameters, "1.bias": evil})["sha256"]
    payload = payload_of(net, contract_metadata([4], "softmax"),
                         parameters={**parameters, "1.biaz": evil}, sha256=signed)
    path = dump(payload, tmp_path / "twice.joblib")
    stream = path.read_bytes()
    assert stream.count(b"\x8c\x061.biaz") == 1
    path.write_bytes(stream.replace(b"\x8c\x061.biaz", b"\x8c\x061.bias"))
    refused(path, "3 data values for 2 parameters: a parameter is given twice")


def test_parameter_data_is_bounded_in_all(tmp_path):
    path = dump(payload_of(softmax_net(), contract_metadata([4], "softmax")),
                tmp_path / "a.joblib")
    refused(path, "more than 50 bytes of parameter data (Limits.array_bytes)",
            limits=nnlib.Limits(array_bytes=50))


def test_unsupported_format_version(tmp_path):
    for version in (0, 3, 99, "2", 2.0, None):
        path = dump(payload_of(softmax_net(), contract_metadata([4], "softmax"),
                               format_version=version), tmp_path / "v.joblib")
        refused(path, "unsupported format version")
    path = dump(payload_of(softmax_net(), contract_metadata([4], "softmax"), format_version=1),
                tmp_path / "v1.joblib")
    refused(path, "nnlib convert OLD NEW")


def test_wrong_digest_and_layout(tmp_path):
    good = payload_of(softmax_net(), contract_metadata([4], "softmax"))
    refused(dump({**good, "sha256": "0" * 64}, tmp_path / "a.joblib"), "sha256 mismatch")
    refused(dump({**good, "sha256": 0}, tmp_path / "a2.joblib"), "sha256 mismatch")
    refused(dump({**good, "extra": 1}, tmp_path / "b.joblib"), "top level must be")
    refused(dump([good["metadata"]], tmp_path / "c.joblib"), "top level must be")
    refused(dump({**good, "format": "other"}, tmp_path / "d.joblib"), "format 'other'")
    refused(dump({**good, "metadata": [1]}, tmp_path / "e.joblib"), "metadata must be a dict")
    # The digest covers every parameter byte.
    parameters = entries(softmax_net())
    parameters["1.weight"]["data"] = b"\x00" * 48
    refused(dump({**good, "parameters": parameters}, tmp_path / "f.joblib"), "sha256 mismatch")


def craft(path: Path, opcodes: bytes) -> Path:
    """A protocol-4 pickle whose opcodes sit in one frame, as pickle writes them (fewer
    than 4 bytes go unframed)."""
    frame = pickle.FRAME + len(opcodes).to_bytes(8, "little") if len(opcodes) >= 4 else b""
    path.write_bytes(b"\x80\x04" + frame + opcodes)
    return path


def test_code_paths_of_pickle_are_closed(tmp_path, marker):
    # Every opcode that imports, calls, or builds something other than plain data is refused
    # by the scan at its first byte, before the unpickler exists.
    cases = {
        "persid": (b"P1\n.", "PERSID"),
        "binpersid": (b"K\x01Q.", "BINPERSID"),
        "ext1": (b"\x82\x01.", "EXT1"),
        "inst": (b"(ios\nsystem\n.", "INST"),
        "obj": (b"(\x8c\x02os\x8c\x06system\x93o.", "global os.system is not allowed"),
        "global_opcode": (b"cbuiltins\neval\n.", "GLOBAL"),
        "stack_global": (b"\x8c\x08builtins\x8c\x04eval\x93.", "global builtins.eval is not"),
        "stack_global_memo": (b"\x8c\x08builtins\x94h\x00\x93.", "STACK_GLOBAL"),
        "reduce": (b"NNR.", "REDUCE"),
        "build": (b"}}b.", "BUILD"),
        "newobj": (b"NN\x81.", "NEWOBJ"),
        "newobj_ex": (b"N}N\x92.", "NEWOBJ_EX"),
        "next_buffer": (b"\x97.", "NEXT_BUFFER"),
        "tuple": (b"K\x01\x85.", "TUPLE1"),
        "set": (b"\x8f.", "EMPTY_SET"),
        "long4": (b"\x8b\x04\x00\x00\x00\x01\x02\x03\x04.", "LONG4"),
        "text_int": (b"I" + b"9" * 100_000 + b"\n.", "INT"),
        "bytearray": (b"\x96\x00\x00\x00\x00\x00\x00\x00\x00.", "BYTEARRAY8"),
    }
    for name, (opcodes, reason) in cases.items():
        refused(craft(tmp_path / f"{name}.joblib", opcodes), reason)
    assert not marker.exists()


def test_framing_pickle_would_not_write_is_refused(tmp_path):
    refused(craft(tmp_path / "ok-but-list.joblib", b"]."), "top level must be")  # control
    path = tmp_path / "unframed.joblib"
    path.write_bytes(b"\x80\x04" + b"N0" * 10 + b"N.")
    refused(path, "pickle opcode POP")
    path.write_bytes(b"\x80\x04" + b"}" * 3 + b"0.")
    refused(path)
    path.write_bytes(b"\x80\x04\x95" + (3).to_bytes(8, "little") + b"}.")
    refused(path, "frame's length is corrupt")
    path.write_bytes(b"\x80\x04\x95" + (100).to_bytes(8, "little") + b"}\x94.")
    refused(path, "frame's length is corrupt")
    path.write_bytes(b"\x80\x04\x95" + (4).to_bytes(8, "little") + b"}\x94}\x94.")
    refused(path, "outside a frame")
    path.write_bytes(b"\x80\x04\x95" + (5).to_bytes(8, "little") + b"}\x94}\x94..")
    refused(path, "unexpected bytes after the end")
    path.write_bytes(b"\x80\x04\x95" + (4).to_bytes(8, "little") + b"}\x94}\x94")
    refused(path, "STOP")
    inner = b"\x95" + (5).to_bytes(8, "little") + b"}\x94}\x94."
    path.write_bytes(b"\x80\x04\x95" + len(inner).to_bytes(8, "little") + inner)
    refused(path, "a pickle frame inside a frame")


def test_lone_surrogate_strings_are_refused(tmp_path):
    metadata = contract_metadata([4], "softmax")
    metadata["description"] = "\ud800"
    with pytest.raises(nnlib.ArtifactError, match="not valid UTF-8"):
        nnlib.save(tmp_path / "a.joblib", softmax_net(), metadata)
    payload = payload_of(softmax_net(), {**contract_metadata([4], "softmax"),
                                         "description": "\ud800"})
    path = tmp_path / "b.joblib"
    path.write_bytes(pickle.dumps(payload, protocol=4))  # pickle writes it "surrogatepass"
    refused(path, "not valid UTF-8")


def test_a_failed_load_leaves_nothing_behind(tmp_path, marker):
    write_raw_payload(tmp_path / "evil.joblib", marker)
    before = sorted(tmp_path.iterdir())
    for _ in range(3):
        refused(tmp_path / "evil.joblib")
    assert sorted(tmp_path.iterdir()) == before
    good = nnlib.save(tmp_path / "good.joblib", softmax_net(), contract_metadata([4],
                                                                                 "softmax"))
    assert nnlib.load(good).metadata["name"] == "test-net"


# ---------------------------------------------------------------------------------------
# Format 1: refused with the command that converts it; converted bit for bit.


def format1_file(path: Path, net: nnlib.Sequential, metadata: dict, compress: int = 0) -> Path:
    """A format-1 artifact as nnlib wrote them before format 2: arrays as joblib objects."""
    payload = {"format": "nnlib-artifact", "format_version": 1,
               "architecture": describe(net.modules),
               "parameters": {k: v.copy() for k, v in net.parameters().items()},
               "metadata": metadata, "sha256": "0" * 64}
    return dump(payload, path, compress=compress)


@pytest.mark.parametrize("compress", [0, 3])
def test_format1_is_refused_and_converted(tmp_path, compress):
    net = every_layer_net()
    metadata = contract_metadata(EVERY_LAYER_SHAPE, "log_softmax")
    old = format1_file(tmp_path / "old.joblib", net, metadata, compress)
    refused(old, "nnlib convert OLD NEW")
    new = convert(old, tmp_path / "new.joblib")
    assert new == tmp_path / "new.joblib"
    loaded = nnlib.load(new)
    assert loaded.metadata == metadata
    for name, value in net.parameters().items():
        assert loaded.model.parameters()[name].tobytes() == value.tobytes()


def test_convert_refuses_what_format1_never_held(tmp_path, marker):
    # Globals after the arrays: the scan skips each array's bytes exactly and finds them.
    net = softmax_net()
    payload = {"format": "nnlib-artifact", "format_version": 1,
               "architecture": describe(net.modules), "parameters": dict(net.parameters()),
               "metadata": {"x": Touch(marker)}, "sha256": "0" * 64}
    path = dump(payload, tmp_path / "evil.joblib")
    with pytest.raises(nnlib.ArtifactError, match=r"global 'posix'\.'system'"):
        convert(path, tmp_path / "out.joblib")
    assert not marker.exists() and not (tmp_path / "out.joblib").exists()
    with pytest.raises(nnlib.ArtifactError, match="not a format-1 artifact"):
        convert(small_artifact(tmp_path / "v2.joblib"), tmp_path / "out.joblib")


# ---------------------------------------------------------------------------------------
# Bounded by construction: for each class of the hardening issue, the worst file near the
# file-size limit is refused, naming the bound.

LIMITS = nnlib.DEFAULT_LIMITS


def near_file_limit(path: Path) -> Path:
    size = path.stat().st_size
    assert size <= LIMITS.file_bytes, size
    return path


def write_huge_ints(path: Path) -> Path:
    # Class 1: integers as wide as pickle's LONG1 allows (2040 bits), filling the file; a
    # 2-million-bit one needs LONG4, refused at its first byte.
    metadata = contract_metadata([4], "softmax")
    metadata["input_shape"] = [2**2030] * 60_000
    return dump(payload_of(softmax_net(), metadata), path)


def write_many_keys(path: Path) -> Path:
    # Class 2: a wide, deep dict of long keys: the path of each key was built eagerly before.
    level: dict = {}
    for depth in range(30):
        level = {f"{'k' * 120}{depth}-{i}": level for i in range(4)}
    metadata = contract_metadata([4], "softmax", extra=level)
    return dump(payload_of(softmax_net(), metadata, sha256="0" * 64), path)  # 4**30 keys


def write_shared_strings(path: Path) -> Path:
    # Class 3: one 8 KB string referenced 2**30 times through a chain of shared lists.
    node: object = "s" * LIMITS.string_length
    for _ in range(30):
        node = [node, node]
    metadata = contract_metadata([4], "softmax", extra=node)
    payload = payload_of(softmax_net(), metadata, sha256="0" * 64)
    return dump(payload, path)


def write_deep(path: Path) -> Path:
    node: object = []
    for _ in range(150):  # joblib pickles in Python, a few frames per level
        node = [node]
    return dump(payload_of(softmax_net(), contract_metadata([4], "softmax", extra=node),
                           sha256="0" * 64), path)


def write_many_values(path: Path) -> Path:
    # A million None visits from a few kilobytes: a thousand references to one list.
    rows = [[None] * 1000] * 1000
    return dump(payload_of(softmax_net(), contract_metadata([4], "softmax", extra=rows),
                           sha256="0" * 64), path)


def sigmoid_tower(layers: int) -> tuple[list, dict]:
    architecture = [{"type": "Sigmoid", "config": {}}] * layers
    architecture += [{"type": "Flatten", "config": {}}, {"type": "Softmax", "config": {}}]
    return architecture, contract_metadata([2**20, 1], "softmax", labels=["0"])


def write_sigmoid_tower(path: Path, layers: int = 33_000) -> Path:
    # Class 4: a tiny file with a correct digest whose dry forward takes hours.
    architecture, metadata = sigmoid_tower(layers)
    return dump(payload_of(nnlib.Sequential(), metadata, architecture=architecture,
                           parameters={}), path, compress=9)


def write_flops(path: Path) -> Path:
    return write_sigmoid_tower(path, layers=200)


def write_im2col(path: Path) -> Path:
    # Class 4: a Conv1D whose im2col matrix is 8 million elements for one sample.
    net = nnlib.Sequential(nnlib.Conv1D(8, 1024, 1, rng=0), nnlib.Flatten(),
                           nnlib.Linear(1017, 2, rng=0), nnlib.Softmax())
    return dump(payload_of(net, contract_metadata([1024, 1024], "softmax", labels=["a", "b"])),
                path)


def write_many_labels(path: Path) -> Path:
    # Class 5: labels are echoed in answers: too many of them.
    labels = [f"label-{i}" for i in range(LIMITS.label_count + 1)]
    net = nnlib.Sequential(nnlib.Linear(4, len(labels), rng=0), nnlib.Softmax())
    return dump(payload_of(net, contract_metadata([4], "softmax", labels=labels)), path)


def write_long_label(path: Path) -> Path:
    labels = ["a", "b", "c" * (LIMITS.label_length + 1)]
    return dump(payload_of(softmax_net(), contract_metadata([4], "softmax", labels=labels)),
                path)


def write_big_metadata(path: Path) -> Path:
    extra = ["x" * 1000] * 200  # 200 KB of JSON from 1 KB of distinct text
    return dump(payload_of(softmax_net(), contract_metadata([4], "softmax", extra=extra)), path)


def write_forged_message(path: Path) -> Path:
    # Class 6: a reason quoting the file must stay one short line.
    architecture = describe(softmax_net().modules)
    architecture[0] = {"type": "Evil\n2026-01-01 INFO forged\r\x1b[2J" + "x" * 5000,
                       "config": {}}
    return dump(payload_of(softmax_net(), contract_metadata([4], "softmax"),
                           architecture=architecture), path)


def write_zlib_bomb(path: Path) -> Path:
    # 64 MiB of zeros in 64 KB, then filler to the file limit: inflating stops at the limit.
    bomb = zlib.compress(bytes(64 * 2**20), 9)
    path.write_bytes(bomb + random.Random(0).randbytes(LIMITS.file_bytes - len(bomb)))
    return path


def write_opcode_flood(path: Path) -> Path:
    return craft(path, b"(" * (LIMITS.file_bytes - 20) + b".")


def write_oversized(path: Path) -> Path:
    path.write_bytes(b"\x80\x04" + bytes(LIMITS.file_bytes))
    return path


# name -> (builder, the refusal it must give)
BOUNDED = {
    "huge ints": (write_huge_ints, "metadata['input_shape'][0]: integer of 2031 bits does not "
                                   "fit in 64 (Limits.int_bits)"),
    "many keys": (write_many_keys, "(Limits.metadata_bytes)"),
    "shared strings": (write_shared_strings, "(Limits.metadata_bytes)"),
    "deep nesting": (write_deep, "nested deeper than 32 (Limits.depth)"),
    "many values": (write_many_values, "more than 100000 values (Limits.nodes)"),
    "sigmoid tower": (write_sigmoid_tower, "(Limits."),
    "flops": (write_flops, "more than 100000000 floating-point operations by "
                           "architecture[7] (Limits.flops)"),
    "im2col": (write_im2col, "Conv1D makes an array of 8331264 elements for one sample, more "
                             "than 2097152 (Limits.activation_elements)"),
    "many labels": (write_many_labels, "Limits.label_count"),
    "long label": (write_long_label, "Limits.label_length"),
    "big metadata": (write_big_metadata, "(Limits.metadata_bytes)"),
    "forged message": (write_forged_message, "unknown layer type 'Evil\\n2026-01-01 INFO"),
    "zlib bomb": (write_zlib_bomb, "inflates to more than the limit of 16777216 bytes "
                                   "(Limits.inflated_bytes)"),
    "opcode flood": (write_opcode_flood, "more than 200000 pickle operations (Limits.ops)"),
    "oversized": (write_oversized, "more than the limit of 16777216 (Limits.file_bytes)"),
}


@pytest.fixture(scope="module")
def bounded_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bounded")
    return {name: build(folder / f"{name.replace(' ', '-')}.joblib")
            for name, (build, _) in BOUNDED.items()}


@pytest.mark.parametrize("case", BOUNDED)
def test_each_class_of_hostile_file_is_refused_naming_its_bound(bounded_files, case):
    path = bounded_files[case]
    if case != "oversized":
        near_file_limit(path)
    error = refused(path, BOUNDED[case][1])
    assert "\n" not in str(error) and "\x1b" not in str(error)


def test_the_sigmoid_tower_is_small_and_has_a_correct_digest(bounded_files):
    # The attack as reported: under a kilobyte, digest right, refused before any dry run.
    path = bounded_files["sigmoid tower"]
    assert path.stat().st_size < 1024
    refused(path, "(Limits.metadata_bytes)")  # its architecture is 850 KB of JSON
    _, metadata = sigmoid_tower(300)
    tower = nnlib.Sequential(*(nnlib.Sigmoid() for _ in range(300)), nnlib.Flatten(),
                             nnlib.Softmax())
    with pytest.raises(nnlib.ArtifactError, match=r"more than 256 layers \(Limits.layers\)"):
        nnlib.validate(nnlib.Artifact(tower, metadata))


MEASURE = r"""
import json, resource, sys, time
import nnlib
good, paths = sys.argv[1], sys.argv[2:]
nnlib.load(good)  # warm: imports and first-call caches are the baseline
with open("/proc/self/status") as status:
    vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:")) * 1024
budget = 256 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (vm + budget, vm + budget))
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
for path in paths:
    start = time.process_time()
    try:
        nnlib.load(path)
        outcome = "loaded"
    except nnlib.ArtifactError as error:
        outcome = error.reason
    except MemoryError:
        outcome = "MemoryError"
    cpu = time.process_time() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    print(json.dumps({"path": path, "outcome": outcome, "cpu": cpu, "rss": rss}), flush=True)
"""


def test_loading_any_hostile_file_is_bounded_in_cpu_and_memory(bounded_files, tmp_path):
    """Each file in a child under RLIMIT_AS = baseline + 256 MiB: refused, < 1 s of CPU.

    CPU is a resource bound here (a limit 5-50x above what is needed), not a speed
    assertion; peak RSS is the child's high-water mark, so each file gets its own child.
    """
    import subprocess
    import sys

    good = small_artifact(tmp_path / "good.joblib")
    for case, path in bounded_files.items():
        result = subprocess.run([sys.executable, "-c", MEASURE, str(good), str(path)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        figures = json.loads(result.stdout.splitlines()[-1])
        assert BOUNDED[case][1] in figures["outcome"], (case, figures)
        assert figures["cpu"] < 1.0, (case, figures)
        assert figures["rss"] < 256 * 2**20, (case, figures)


# ---------------------------------------------------------------------------------------
# The serving contract: one validate, run by save and by load with the same message.


def saved_without_contract(tmp_path: Path, net, metadata) -> Path:
    return dump(payload_of(net, metadata), tmp_path / "net.joblib")


@pytest.mark.parametrize("net, metadata, reason", [
    (softmax_net(), contract_metadata([4], "log_softmax"), "ends in Softmax, not LogSoftmax"),
    (every_layer_net(), contract_metadata(EVERY_LAYER_SHAPE, "softmax"),
     "ends in LogSoftmax, not Softmax"),
    (nnlib.Sequential(nnlib.Linear(4, 3, rng=0)), contract_metadata([4], "softmax"),
     "ends in Linear"),
    (softmax_net(), contract_metadata([4], "probabilities"), "must be one of"),
    (softmax_net(), contract_metadata([4], ["softmax"]), "must be one of"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "b", "c", "d"]),
     "expected (1, 4) for 4 labels"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "b"]),
     "expected (1, 2) for 2 labels"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "a", "b"]), "distinct"),
    (softmax_net(), contract_metadata([4], "softmax", labels=[0, 1, 2]), "strings"),
    (softmax_net(), contract_metadata([5], "softmax"),
     "dry forward on zeros of shape [1, 5] would fail: architecture[1] Linear expects 4 "
     "input features, gets shape [1, 5]"),
    (softmax_net(), contract_metadata([0], "softmax"), "input_shape"),
    (softmax_net(), contract_metadata([2**21], "softmax"), "(Limits.input_size)"),
    (softmax_net(), {k: v for k, v in contract_metadata([4], "softmax").items()
                     if k not in ("created", "metrics")}, "missing keys ['metrics', 'created']"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "name": ""}, "name"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "dataset": "digits"}, "dataset"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "input_kind": "image"}, "input_kind"),
    (softmax_net(), {**contract_metadata([4], "softmax"), "k" * 129: 1},
     "is not a string of at most 128 characters (Limits.key_length)"),
    (softmax_net(), contract_metadata([4], "softmax", labels=["a", "b", "c" * 100_000]),
     "metadata['labels'][2]: a string of 100000 characters, more than 8192 "
     "(Limits.string_length)"),
])
def test_contract_is_checked_by_save_load_and_validate_alike(tmp_path, net, metadata, reason):
    path = tmp_path / "net.joblib"
    with pytest.raises(nnlib.ArtifactError) as saving:
        nnlib.save(path, net, metadata)
    assert reason in saving.value.reason
    assert not path.exists()

    loading = refused(saved_without_contract(tmp_path, net, metadata), reason)
    assert str(loading) == str(saving.value)  # the same file, the same words
    with pytest.raises(nnlib.ArtifactError) as validating:
        nnlib.validate(nnlib.Artifact(net, metadata))
    assert validating.value.reason == saving.value.reason
    with pytest.raises(nnlib.ArtifactError, match=r"somewhere\.joblib"):
        nnlib.validate(nnlib.Artifact(net, metadata), path="somewhere.joblib")


def test_save_refuses_what_the_limits_refuse_after_writing(tmp_path):
    # A bound only the written file shows (its size) is checked by loading it back.
    small = nnlib.Limits(file_bytes=500)
    with pytest.raises(nnlib.ArtifactError, match=r"\(Limits.file_bytes\)"):
        nnlib.save(tmp_path / "a.joblib", softmax_net(), contract_metadata([4], "softmax"),
                   limits=small)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_dry_forward_is_refused(tmp_path):
    net = softmax_net()
    net.modules[1].parameters()["bias"][...] = np.finfo(np.float32).max
    net = nnlib.Sequential(net.modules[1], nnlib.Scale(1e30), nnlib.Softmax())
    path = saved_without_contract(tmp_path, net, contract_metadata([4], "softmax"))
    refused(path, "NaN or infinity")


def test_validate_accepts_the_contract_nets():
    nnlib.validate(nnlib.Artifact(softmax_net(), contract_metadata([4], "softmax")))
    nnlib.validate(nnlib.Artifact(every_layer_net(),
                                  contract_metadata(EVERY_LAYER_SHAPE, "log_softmax")))


def test_limits_are_one_frozen_dataclass_with_a_line_each():
    import dataclasses
    import inspect

    fields = [field.name for field in dataclasses.fields(nnlib.Limits)]
    source = inspect.getsource(nnlib.Limits)
    for name in fields:
        assert source.split(f"    {name}:")[0].rsplit("\n", 2)[-2].startswith("    #: "), name
    with pytest.raises(dataclasses.FrozenInstanceError):
        nnlib.DEFAULT_LIMITS.ops = 10**9


# ---------------------------------------------------------------------------------------
# Pins: the public behaviour of joblib.dump and pickle that format 2 relies on.


def test_pin_joblib_version_range():
    major, minor = (int(part) for part in joblib.__version__.split(".")[:2])
    assert (major, minor) >= (1, 6) and major < 2


@pytest.mark.parametrize("compress", [0, 3])
def test_pin_joblib_dump_writes_a_plain_protocol_4_pickle(tmp_path, compress):
    # joblib.dump of plain data (large bytes included: pickle writes them outside frames)
    # is a protocol-4 pickle, plain or in a bare zlib stream, that the scan accepts.
    payload = {"big": bytes(200_000), "small": b"xy", "text": "é" * 70_000, "n": [1, 2.5, None]}
    path = dump(payload, tmp_path / "p.joblib", compress=compress)
    data = path.read_bytes()
    stream = zlib.decompress(data) if compress else data
    assert data[:1] == (b"\x78" if compress else b"\x80")
    assert stream[:2] == b"\x80\x04"
    assert read_pickle(stream, nnlib.Limits(metadata_bytes=2**20)) == (payload, 2)
