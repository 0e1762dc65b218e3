import json

from softprompt.backbones.registry import CACHE_MARKER, _cache_is_complete


def test_partial_or_corrupt_cache_is_detected(tmp_path):
    folder = tmp_path / "smollm2-135m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 100)
    assert not _cache_is_complete(folder)  # no marker: a conversion that died half-way
    (folder / CACHE_MARKER).write_text(json.dumps({"files": {"model.safetensors": 100}}))
    assert _cache_is_complete(folder)
    (folder / "model.safetensors").write_bytes(b"x" * 50)  # truncated file
    assert not _cache_is_complete(folder)
    (folder / CACHE_MARKER).write_text("{not json")
    assert not _cache_is_complete(folder)
