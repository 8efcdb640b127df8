"""User-facing errors: one line, no traceback, non-zero exit (see cli.main)."""

EXIT_OK = 0  # done (also: the checkpoint resumed had finished, and a line said so)
EXIT_BUG = 1  # an exception llmjepa did not expect (Python's own status, with its traceback): a bug to report
EXIT_USER_ERROR = 2  # bad input or flags, found before training (also: --output_dir in use by another run,
#                      a checkpoint of another run, truncated or corrupt weights or trainer state)
EXIT_NOT_FINITE = 3  # training stopped at a non-finite loss, JEPA term or gradient norm
EXIT_SAVE_FAILED = 4  # a checkpoint or the final model could not be written (a full disk): nothing partial kept;
#                      also --push_to_hub failed after the model and its card were saved locally
EXIT_KERNEL_CHECK = 5  # --kernel_check strict: the attention backend disagreed with the PyTorch form
EXIT_SIGINT = 130  # 128 + SIGINT: stopped by Ctrl-C (a checkpoint saved)
EXIT_SIGTERM = 143  # 128 + SIGTERM: stopped by kill, SLURM or Kubernetes (a checkpoint saved)


class UserError(Exception):
    """A problem with the user's input or flags, reported as a single line."""


class NonFiniteLoss(Exception):
    """A training step produced a non-finite loss, JEPA term or gradient norm; raised before that step's
    optimizer update, so the weights are still the previous step's."""

    def __init__(self, step: int, values: dict[str, float], record: dict) -> None:
        self.step = step
        self.values = values  # the non-finite quantities, as computed
        self.record = record  # the step's metrics record, non-finite values as None
        found = ", ".join(f"{name} = {value}" for name, value in values.items())
        super().__init__(f"step {step}: {found}")


class TrainingStopped(Exception):
    """Training ended early on purpose (non-finite values, a signal); one line, its own exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SaveFailed(Exception):
    """A checkpoint could not be written (a full disk, a quota, an I/O error); its partial folder is removed."""

    def __init__(self, path: str, cause: BaseException) -> None:
        self.path = path
        self.cause = cause
        reason = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"{path}: {reason}")


def located(path: object, line: int | None, message: str) -> UserError:
    """An error that names the file and (1-based) line it came from."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(f"{where}: {message}")
