"""Hooks that tests register on a Runner to see what it holds at a given moment."""
import torch
from mmengine.hooks import Hook

__all__ = ['StateAtTrainStart']


class StateAtTrainStart(Hook):
    """Copies of the model's state dict and the optimizer's state as the first training
    iteration starts: after ``--load-from`` / ``--resume`` loaded a checkpoint and
    every hook's ``before_run`` / ``before_train`` ran."""
    priority = 'LOWEST'

    def __init__(self):
        self.weights = self.optimizer_state = None

    def before_train(self, runner):
        self.weights = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
        self.optimizer_state = runner.optim_wrapper.state_dict()['state']

    def assert_weights(self, state_dict) -> None:
        """Every tensor of ``state_dict`` (a checkpoint's) is the model's, exactly."""
        assert state_dict
        for key, value in state_dict.items():
            assert torch.equal(self.weights[key], value), key
