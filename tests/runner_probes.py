"""Hooks that tests register on a Runner to see what it holds at a given moment."""
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
