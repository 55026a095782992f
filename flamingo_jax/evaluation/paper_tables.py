"""The Flamingo paper's tables that the code scores against: the one copy (Alayrac et al., 2022).

        DEV           the five development benchmarks of Section 3 (COCO, OKVQA, VQAv2, MSVDQA, VATEX), used for
                    every design decision and ablation (Appendix B.1 lists them beside the held-out set)
        SOTA          {DEV benchmark: fine-tuned state of the art}, Table 1's "Fine-tuned SotA" row, in the
                    tables' units (CIDEr x100 for COCO and VATEX, accuracy in % for the three QA benchmarks)
        WORLD_TO_DEV  {the synthetic world's eval task (flamingo_jax.data.eval_sets): the DEV benchmark it stands for}
        DEV_TO_WORLD  its inverse

Table 3's overall score divides each DEV score by its SotA and averages (evaluation.metrics.overall_score);
the world's analogues use the same denominators so the numbers read on the paper's scale.
"""

from __future__ import annotations

DEV = ("coco", "okvqa", "vqav2", "msvdqa", "vatex")
SOTA = {"coco": 143.3, "okvqa": 54.4, "vqav2": 80.2, "msvdqa": 47.9, "vatex": 76.3}
WORLD_TO_DEV = {
    "captions": "coco", "knowledge_vqa": "okvqa", "vqa": "vqav2", "video_qa": "msvdqa", "video_captions": "vatex"
}
DEV_TO_WORLD = {v: k for k, v in WORLD_TO_DEV.items()}
