"""Training: train state, jitted steps, the fit loop and the library entry points."""

from kdjax.train.api import TrainedModel, check_teacher, distill, train_student, train_teacher
from kdjax.train.loop import FitResult, NonFiniteLossError, fit
from kdjax.train.state import TrainState, init_train_state, make_optimizer
from kdjax.train.steps import evaluate, make_eval_step, make_train_step, teacher_variables

__all__ = ["FitResult", "NonFiniteLossError", "TrainState", "TrainedModel", "check_teacher", "distill",
           "evaluate", "fit", "init_train_state", "make_eval_step", "make_optimizer", "make_train_step",
           "teacher_variables", "train_student", "train_teacher"]
