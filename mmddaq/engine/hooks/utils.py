"""What the mmddaq hooks share."""
from mmengine.model import is_model_wrapper


def algorithm_of(runner):
    """The runner's algorithm model, unwrapped from DDP if needed."""
    model = runner.model
    return model.module if is_model_wrapper(model) else model
