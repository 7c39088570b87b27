"""The microscopy suite: μ-Bench perception (Lozano et al., NeurIPS 2024 Datasets and Benchmarks).

Six tasks share one download (:mod:`.ubench`): five coarse question types asked of every image (``ubench-domain``,
``ubench-subdomain``, ``ubench-modality``, ``ubench-submodality``, ``ubench-stain``) and the fine-grained,
dataset-specific classification question (``ubench-fine``). Every task is a multiple-choice test set with no
training split: contrastive models pick the option whose caption is most similar to the image (protocol
``zero-shot``), generative models answer the lettered question (:mod:`lifebench.vlm`). Metric: accuracy.
:mod:`lifebench.report.microscopy` scores them per source dataset, domain and taxonomy group and compares specialist with generalist
models. See docs/microscopy.md.
"""
