"""Evaluation: the paper's metrics and tables for text-to-image and editing (SoftREPA paper, Tables 4-6).

    python -m evaluation t2i ...      COCO val2017, vanilla vs tokens, paper Table 4
    python -m evaluation edit ...     FlowEdit on DIV2K / Cat2Dog, paper Tables 5 / 6, Fig. 5;
                                      on PIE-Bench (--pie-bench DIR) with its region metrics
    python -m evaluation table ...    one table from several runs
    accelerate launch -m evaluation ...   the same across GPUs

Modules: ``metrics`` (the metric registry: ImageReward, PickScore, CLIP, HPS v2.1, FID, LPIPS),
``region_metrics`` (PIE-Bench's: structure distance, unedited-region PSNR / LPIPS / MSE / SSIM,
CLIP whole / edited), ``fid`` (offline Inception + Fréchet distance), ``image_tensors`` (image ->
metric input), ``datasets`` (COCO captions, editing pairs, run-length masks), ``pie_bench`` (the
PIE-Bench loader), ``results`` (resumable run folder), ``runner`` (the
loop shared by both tasks, multi-process), ``t2i`` / ``edit`` (the tasks), ``tables`` (Tab. 4-6
writers, Fig. 5 plot), ``cli``. See docs/evaluation.md.
"""

from evaluation.metrics import METRICS, build_metric

__all__ = ["METRICS", "build_metric"]
