"""Training magma models on robot data: config, samples for the three objectives, mixture, trainer, policy.

Heavy modules (torch, the model) load only when a submodule that needs them is imported:

    from magma_core.training.config import TrainConfig, load_config
    from magma_core.training.trainer import Trainer
    from magma_core.training.policy import MagmaPolicy
"""
