"""Flamingo data: the generated world, TFDS builders, preprocessing, and the resumable training mixture.

Public API (import the submodules; nothing heavy is imported by this package itself):
    config.default_data_config() / tiny_data_config()     the schema of config.data, documented there
    mixture.make_mixture_iterator(config.data, batch_size_per_dataset=None, seed=None, process_index=0,
                                  process_count=1, vocab=None, names=None) -> MixtureIterator
        next(it) -> {dataset: batch}; it.get_state() / it.set_state(state); it.weights; it.vocab; it.metrics()
    mixture.make_vocab(config.data) -> Vocabulary (base_size, image_id = base_size, eoc_id = base_size + 1)
    eval_sets.eval_source(config.data, name, 'support' | 'query'); eval_sets.record_media(...)
    tasks.register(config.data) -> seqio Task and Mixture names
    world.World / WorldConfig / WorldSource                the generated world itself
    preview (python -m flamingo_jax.data.preview --config ... --out DIR --n 4)
"""
