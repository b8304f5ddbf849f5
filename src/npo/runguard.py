"""What keeps a run directory whole around the training loop: its lock, failed writes as one line,
a stop at a step boundary on SIGTERM/SIGINT, and the final model written atomically. A mixin of
`npo.train.Trainer`, which sets the attributes used here (run_dir, lock, step, ...)."""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal

import torch

from npo.checkpoint import DONE_MARKER, LOCK_FILE, write_failure
from npo.errors import NpoError, Stopped
from npo.modeling import save_model
from npo.runtime import write_json


class RunGuard:
    """Methods of the trainer that deal with the run directory rather than with the step."""

    def close(self, failed: bool = False) -> None:
        """Release the run directory's lock (and, after a failed start, remove the directory it made)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
            leftover = {p.name for p in self.run_dir.iterdir()} - {LOCK_FILE} if self.run_dir.is_dir() else set()
            if failed and self.created and not leftover:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def resume_command(self) -> str:
        return f"npo {'finetune' if self.primary == 'train' else 'unlearn'} --resume {shlex.quote(str(self.run_dir))}"

    @contextlib.contextmanager
    def _writing(self, what: str):
        """A failed write (a full disk) as one line: what failed, what is kept, how to go on."""
        try:
            yield
        except OSError as err:
            raise NpoError(f"{write_failure(err, what, self.run_dir)}; free space and resume with: "
                           f"{self.resume_command()}") from None

    def _save_final(self) -> None:
        """RUN/model appears whole or not at all (written beside it, then renamed), then done.json."""
        model = self.acc.unwrap_model(self.scorer).model
        final, tmp = self.run_dir / "model", self.run_dir / ".model-tmp"
        with self._writing("the final model"):
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                save_model(model, self.tok, tmp, merge=self.cfg.save_merged)
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            write_json(self.run_dir / DONE_MARKER, {"steps": self.step, "skipped": self.skipped, "model": str(final)})

    def _stop_if_signalled(self) -> None:
        """At a step boundary: after a SIGTERM/SIGINT (on any process), save a checkpoint and stop."""
        signum = self.signals.received
        if self.world > 1:  # every process stops at the same step
            signum = int(self.acc.reduce(torch.tensor(signum, device=self.acc.device), "max"))
        if not signum:
            return
        if self.saved_step != self.step:
            self.save_checkpoint()
        raise Stopped(f"stopped at step {self.step} of {self.total_steps} by {signal.Signals(signum).name}; "
                      f"checkpoint saved; resume with: {self.resume_command()}", 128 + signum)

    def _stop_now(self, signum: int) -> None:
        """A second signal: stop mid-step; the atomic save keeps the last checkpoint whole."""
        kept = (f"the checkpoint of step {self.saved_step} is kept" if self.saved_step is not None
                else "no checkpoint was saved yet")
        where = f"while saving the checkpoint of step {self.step}" if self.saving else f"during step {self.step + 1}"
        raise Stopped(f"stopped {where} of {self.total_steps} by a second {signal.Signals(signum).name}; {kept}; "
                      f"resume with: {self.resume_command()}", 128 + signum)
