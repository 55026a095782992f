"""The world-scale baseline: the model and mixture that `flamingo_jax.reproduce` trains and that every row of
the world-scale ablation tables (experiments/ablations.py) modifies.

    python -m flamingo_jax.reproduce --workdir DIR                      # uses this file
    python -m flamingo_jax.train --config experiments/world.py --workdir DIR --config.pretrained.vision=...

It is experiments/tiny.py with a 4-layer LM (so that xattn 'every 2nd / every 4th / single in the middle' are
different placements), a larger world (`scale`: its eval sets then hold 100 caption / VQA queries and 50 video
queries) and `batch` examples per dataset, trained for `steps` accumulated updates. It is built so that
in-context learning exists and is needed, up to 32 shots (a 32-shot prompt is ~470-600 tokens and 33 images):

- The frozen LM is pretrained on long documents (`lm_len` tokens, as long as a 32-shot prompt or longer):
  fact paragraphs and fact quizzes that ask about creatures described earlier in the same document, so the
  LM both knows the facts and reads (and copies from) long contexts. Rotary positions do not extrapolate:
  an LM pretrained on 128-token texts degrades past 128 tokens, and with it every prompt of 8 shots or more.
- Flamingo trains on the paper's M3W windows: 256 tokens with up to 5 images (Section 3.3 / Appendix A.3.3);
  pages include quizzes and captioned galleries (the few-shot layouts) and fact pages, which state creatures'
  facts and then ask about pictured creatures ('Question: Where does this creature live? Answer: ...').
- Knowledge questions are answerable from facts that the LM corpus states; counts are digits in the eval
  answers and words in all training text, so the answer format comes from the shots.
Arg knobs: steps, lm_layers, warmup, lr, scale, batch, m3w_len (M3W window, tokens), m3w_images, lm_len
(LM pretraining context, tokens), lm_batch, text_sections (sections per LM document).
Pretrained towers: `reproduce` and `ablate` fill config.pretrained with towers they pretrain on the world.
"""

import ml_collections

from flamingo_jax import configs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = configs.parse_arg(arg, steps=600, lm_layers=4, warmup=30, lr=1e-3, scale=0.5, batch=4, m3w_len=256,
                          m3w_images=5, lm_len=1024, lm_batch=4, text_sections=12)
    tiny = _load_tiny()
    with tiny.unlocked():
        tiny.model.lm.num_layers = a.lm_layers
        tiny.total_steps = a.steps
        tiny.log_every = max(a.steps // 30, 1)
        tiny.optimizer.warmup_steps = a.warmup
        tiny.optimizer.lr = a.lr
        tiny.checkpoint_every = max(a.steps // 4, 1)
        tiny.data.world.scale = a.scale
        for name in tiny.data.datasets:
            tiny.data.datasets[name].batch_size = a.batch
        tiny.data.datasets.m3w.seq_len = a.m3w_len
        tiny.data.datasets.m3w.max_images = a.m3w_images
        world = tiny.data.world
        world.quiz_pages, world.fact_pages, world.max_quiz_images = 0.3, 0.2, 10
        world.text_sections = a.text_sections
        tiny.data.datasets.text.seq_len = a.lm_len
        tiny.data.datasets.text.batch_size = a.lm_batch
        # room for a 32-shot prompt left-padded to its power-of-two bucket (1024) plus the generated tokens
        tiny.model.lm.max_len = max(2048, 2 * a.lm_len)
    return tiny


def _load_tiny() -> ml_collections.ConfigDict:
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")
    spec = importlib.util.spec_from_file_location("_world_base_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
