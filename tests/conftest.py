"""Test-session settings: cheaper XLA:CPU compiles and a persistent compilation cache.

JAX compiles dominate this suite's time. Tests only check numerics of tiny models, so LLVM's expensive
optimisation passes are not worth their compile time here (about 2x faster compiles, measured on the tiny
train step); benchmarks never use these flags. Subprocesses started by tests inherit the environment.
"""

import os
import tempfile

_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FAST_COMPILE).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "flamingo_jax_test_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
