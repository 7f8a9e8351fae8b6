"""Training: train state, jitted steps, the fit loop and the library entry points."""

from kdjax.train.api import (TrainedModel, chain, check_run, check_teacher, distill, import_trained, mean_teacher,
                             restore_trained, run_identity, teacher_identity, train_student, train_teacher, untrained)
from kdjax.train.hooks import Hook
from kdjax.train.loop import FitResult, NonFiniteLossError, fit
from kdjax.train.online import (OnlineResult, create_students, evaluate_online, init_online_state,
                                make_online_eval_step, make_online_step, student_state, train_online)
from kdjax.train.state import TrainState, init_train_state, make_optimizer
from kdjax.train.evaluation import evaluate, make_eval_step
from kdjax.train.step import Recipe, keep_if_finite, make_train_step, student_step, update
from kdjax.train.heads import evaluate_heads
from kdjax.train.teachers import evaluate_ensemble, run_teachers, teacher_groups, teacher_variables

__all__ = ["run_identity", "teacher_identity", "FitResult", "Hook", "NonFiniteLossError", "TrainState", "TrainedModel", "check_teacher", "distill",
           "evaluate", "fit", "init_train_state", "make_eval_step", "make_optimizer", "make_train_step",
           "teacher_variables", "train_student", "train_teacher", "check_run", "untrained", "restore_trained",
           "import_trained",
           "OnlineResult", "create_students", "evaluate_online", "init_online_state", "make_online_eval_step",
           "make_online_step", "student_state", "train_online",
           "Recipe", "keep_if_finite", "student_step", "update",
           "chain", "evaluate_ensemble", "evaluate_heads", "mean_teacher", "run_teachers", "teacher_groups"]
