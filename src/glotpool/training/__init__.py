"""Training layer: task heads, the trainer on cached states, metrics, DistributedDataParallel training.

    heads.py      single / pair classifiers, STS and contrastive retrieval heads (task-type facts live here)
    trainer.py    TrainConfig, prepare_splits, train_pooler, evaluate, save_run
    metrics.py    scikit-learn / scipy metrics per task type
    ddp.py        exact DDP training over a cache (torchrun / accelerate)
"""
