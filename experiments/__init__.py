"""The experiment configs, installed as `flamingo_jax.experiments` (see flamingo_jax.configs.find_config)."""
