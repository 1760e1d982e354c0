"""The onnxruntime backend answers like the Paddle Inference backend, converts once into a cache outside the
manifested version folder, and reports a failed conversion as a clear RuntimeError."""

import shutil

import numpy as np
import pytest

from services.runtime.repository import ModelRepository, ModelVersion, verify_manifest, write_manifest
from services.worker.backends import PaddleBackend, create_backend

pytest.importorskip(
    "onnxruntime",
    reason="onnxruntime is not installed: the onnxruntime backend is optional (pip install onnxruntime)",
)

from services.worker.onnx_backend import OnnxRuntimeBackend, cache_key  # noqa: E402

pytestmark = pytest.mark.slow

TEXTS = [
    "在吗",
    "我的快递到哪了？订单号2023112345678",
    "退款什么时候到账",
    "iPhone15有货吗",
    "我要投诉你们的快递员态度太差了" * 3,
    "好",
    "外卖送得很快，味道也不错，就是米饭有点少，下次还会再点的。" * 4,  # longer than max_seq_len: truncated
]
# batches of different sizes and lengths: batch and sequence dimensions are dynamic
BATCHES = [TEXTS[:1], TEXTS[5:6], TEXTS[:3], TEXTS, TEXTS * 2 + TEXTS[:2]]


@pytest.fixture
def onnx_cache(tmp_path, monkeypatch):
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("KEFU_ONNX_CACHE", str(cache))
    monkeypatch.setenv("KEFU_RUNNER_CPU_THREADS", "1")
    return cache


@pytest.mark.parametrize("name,output", [("intent", "probs"), ("faq", "embedding")])
def test_onnxruntime_matches_paddle(model_repo, onnx_cache, name, output):
    version = ModelRepository(model_repo).open(name)
    onnx = OnnxRuntimeBackend(version)
    paddle = PaddleBackend(version)
    assert onnx.name == "onnxruntime" and onnx.max_batch_size == version.config.max_batch_size
    onnx.health()
    tokenizer = version.tokenizer()
    seen_shapes = set()
    for batch in BATCHES:
        ids = tokenizer(batch)
        seen_shapes.add(ids.shape)
        got, want = onnx.infer(ids), paddle.infer(ids)
        assert set(got) == {o.name for o in version.config.outputs} == {output}
        assert got[output].shape == want[output].shape == (len(batch), version.config.outputs[0].dims[-1])
        assert got[output].dtype == np.float32
        np.testing.assert_allclose(got[output], want[output], atol=1e-4, rtol=0)
    assert len({s[0] for s in seen_shapes}) > 2 and len({s[1] for s in seen_shapes}) > 2
    with pytest.raises(ValueError):
        onnx.infer(np.array([[1, 2]], dtype=np.int32))


def test_converted_once_into_cache_outside_the_version(model_repo, onnx_cache):
    version = ModelRepository(model_repo).open("intent")
    before = sorted(p.name for p in version.path.iterdir())
    first = create_backend("onnxruntime", version)
    assert first.onnx_file.parent == onnx_cache
    assert first.onnx_file.name == f"{cache_key(version)}.onnx"
    mtime = first.onnx_file.stat().st_mtime_ns
    second = OnnxRuntimeBackend(version)  # from the cache: not converted again
    assert second.onnx_file == first.onnx_file and second.onnx_file.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in version.path.iterdir()) == before
    verify_manifest(version.path)  # the manifested version folder is untouched
    assert cache_key(ModelRepository(model_repo).open("faq")) != cache_key(version)


def test_failed_conversion_is_a_clear_error(model_repo, onnx_cache, tmp_path):
    good = ModelRepository(model_repo).open("intent")
    staged = tmp_path / "staged"
    shutil.copytree(good.path, staged)
    (staged / "inference.json").write_text('{"not": "a paddle program"}', "utf-8")
    write_manifest(staged)  # a consistent manifest: the cache key comes from it
    broken = ModelVersion(good.model_dir, good.version, good.config, verify=False, path=staged)
    with pytest.raises(RuntimeError, match="paddle2onnx could not convert"):
        OnnxRuntimeBackend(broken)
    assert not list(onnx_cache.glob("*.onnx"))  # nothing half-written is left to be picked up later
