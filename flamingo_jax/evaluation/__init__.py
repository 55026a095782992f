"""Few-shot evaluation: metrics (CIDEr-D, VQA accuracy, ROC-AUC, top-1, overall score), PTB tokenisation,
prompts, RICES, cached decoding (greedy, beam search, candidate ranking) and the harness.

    from flamingo_jax.evaluation import metrics, decoding, harness
    python -m flamingo_jax.evaluate --config ... --workdir DIR --tasks ... --shots 0,4,8   (the CLI)
"""
