"""Training: train state, jitted steps, the fit loop and the library entry points."""

from kdjax.train.api import (TrainedModel, chain, check_teacher, distill, mean_teacher, restore_trained, train_student,
                             train_teacher)
from kdjax.train.loop import FitResult, NonFiniteLossError, fit
from kdjax.train.online import (OnlineResult, create_students, evaluate_online, init_online_state,
                                make_online_eval_step, make_online_step, student_state, train_online)
from kdjax.train.state import TrainState, init_train_state, make_optimizer
from kdjax.train.steps import evaluate, make_eval_step, make_train_step, teacher_variables
from kdjax.train.heads import evaluate_heads
from kdjax.train.teachers import evaluate_ensemble, run_teachers, teacher_groups

__all__ = ["FitResult", "NonFiniteLossError", "TrainState", "TrainedModel", "check_teacher", "distill",
           "evaluate", "fit", "init_train_state", "make_eval_step", "make_optimizer", "make_train_step",
           "teacher_variables", "train_student", "train_teacher", "restore_trained",
           "OnlineResult", "create_students", "evaluate_online", "init_online_state", "make_online_eval_step",
           "make_online_step", "student_state", "train_online",
           "chain", "evaluate_ensemble", "evaluate_heads", "mean_teacher", "run_teachers", "teacher_groups"]
