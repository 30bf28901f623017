"""The app's patch runs: launch each as a `JobProcess` followed in a thread worker, apply its events, cancel it.

Mixed into `ExplorerApp`. It never touches a screen: it bumps the app's `jobs_version` (a job made progress) and
`runs_version` (a run was stored), which the Runs screen watches. Events are opaque here: `jobs.apply_event` is the one
place that reads them.
"""

from __future__ import annotations

from pathlib import Path

from textual import work
from textual.reactive import reactive

from .host import AppHost
from .job_process import JobProcess, JobState
from .jobs import PatchJob, PatchRequest, apply_event
from .messages import JobEvent


class JobManager(AppHost):
    """Patch runs launched in this session (`self.jobs`, oldest first), each started as `self.patch_command`."""

    jobs: list[PatchJob]
    patch_command: tuple[str, ...]
    jobs_version: reactive[int]  # the app's counters (see `ExplorerApp`) that these bump
    runs_version: reactive[int]

    def start_patch(self, request: PatchRequest) -> PatchJob:
        process = JobProcess(
            [*self.patch_command, *request.argv(self.opened_store.path)], self.post_message, what="the run"
        )
        job = PatchJob(number=len(self.jobs) + 1, request=request, process=process)
        self.jobs.append(job)
        if process.start():
            job.state = JobState.RUNNING
        self.follow_patch_job(job, process)
        self.notify(f"run {job.number} started: {request.name()} (4: runs screen, c there cancels)")
        self.jobs_version += 1
        return job

    @work(thread=True, group="patch", exit_on_error=False, description="patch run")
    def follow_patch_job(self, job: PatchJob, process: JobProcess) -> None:
        """Runs in a thread until the run's process has ended; then its temporary files go."""
        process.follow()
        for path in job.request.cleanup:
            Path(path).unlink(missing_ok=True)

    def patch_job_event(self, message: JobEvent) -> None:
        """One event of a patch run's process (the app's `on_job_event` hands it here)."""
        job = next((job for job in self.jobs if job.process is message.process), None)
        if job is None:
            return
        if apply_event(job, message.event):
            if job.state == JobState.DONE:
                self.notify(f"run {job.number} finished: {job.request.name()}")
                self.runs_version += 1
            elif job.state == JobState.FAILED:
                self.notify(f"run {job.number} failed: {job.error}", severity="error", timeout=20)
            elif job.state == JobState.CANCELLED:
                self.notify(f"run {job.number} cancelled; nothing was stored", severity="warning")
        self.jobs_version += 1

    def action_cancel_patch(self) -> None:
        """Cancel the newest running job."""
        for job in reversed(self.jobs):
            if job.process is not None and job.process.cancel():
                job.stage = "cancelling"
                self.notify(f"cancelling run {job.number}…", severity="warning")
                self.jobs_version += 1
                return
        self.notify("no patch run is running")

    def stop_every_job(self) -> None:
        """Leaving the app stops its runs and waits until they are gone; nothing half-written is kept."""
        for job in self.jobs:
            if job.process is not None:
                job.process.stop(grace=0)
