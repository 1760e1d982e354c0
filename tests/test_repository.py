import pytest

from services.runtime.repository import ModelConfig, RepositoryError, VersionPolicy
from services.runtime.runner import RunnerError, RunnerSettings, build_config


def test_version_policies():
    assert VersionPolicy().select([3, 1, 2]) == [3]
    assert VersionPolicy(latest=2).select([1, 2, 3]) == [2, 3]
    assert VersionPolicy(all=True).select([2, 1]) == [1, 2]
    assert VersionPolicy(specific=[1, 5]).select([1, 2, 3]) == [1]
    with pytest.raises(ValueError, match="exactly one of"):
        VersionPolicy(latest=1, all=True)


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "name: intent\ntask: classification\ninputs: []\noutputs: []\nmax_batch_size: 0\nmax_seq_len: 32\nbogus: 1\n"
    )
    with pytest.raises(RepositoryError) as e:
        ModelConfig.load(path)
    assert "max_batch_size" in str(e.value) and "bogus" in str(e.value)


@pytest.mark.slow  # model_repo trains and exports the tiny models
def test_gpu_and_tensorrt_guarded_on_cpu_build(model_repo):
    import paddle

    from services.runtime.repository import ModelRepository

    version = ModelRepository(model_repo).open("intent")
    with pytest.raises(RunnerError, match="TensorRT needs device=gpu"):
        build_config(version, RunnerSettings(tensorrt=True))
    if not paddle.device.is_compiled_with_cuda():
        with pytest.raises(RunnerError, match="no CUDA"):
            build_config(version, RunnerSettings(device="gpu", tensorrt=True))


def test_runner_settings_from_env(monkeypatch):
    monkeypatch.setenv("KEFU_RUNNER_CPU_THREADS", "2")
    monkeypatch.setenv("KEFU_RUNNER_ONEDNN", "false")
    settings = RunnerSettings.from_env()
    assert settings.cpu_threads == 2 and settings.onednn is False
