"""The app's patch runs: launch each in a thread worker (the subprocess does the work), follow its events, cancel it.

Mixed into `ExplorerApp`. It never touches a screen: it bumps the app's `jobs_version` (a job made progress) and
`runs_version` (a run was stored), which the Runs screen watches. Events are opaque here: `jobs.apply_event` is the one
place that reads them.
"""

from __future__ import annotations

from textual import work

from .jobs import PatchJob, PatchRequest, apply_event


class JobManager:
    """Patch runs launched in this session (`self.jobs`, oldest first) and their runner (`self.runner`)."""

    def start_patch(self, request: PatchRequest) -> PatchJob:
        job = PatchJob(number=len(self.jobs) + 1, request=request)
        self.jobs.append(job)
        self.run_patch_job(job)
        self.notify(f"run {job.number} started: {request.name()} (4: runs screen, c there cancels)")
        self.jobs_version += 1
        return job

    @work(thread=True, group="patch", exit_on_error=False, description="patch run")
    def run_patch_job(self, job: PatchJob) -> None:
        """Runs in a thread: the subprocess does the work; each event comes back to the app's thread."""
        self.runner.run(job, self.store.path, lambda job, event: self.call_from_thread(self._job_event, job, event))

    def _job_event(self, job: PatchJob, event) -> None:
        if apply_event(job, event):
            if job.state == "done":
                self.notify(f"run {job.number} finished: {job.request.name()}")
                self.runs_version += 1
            elif job.state == "failed":
                self.notify(f"run {job.number} failed: {job.error}", severity="error", timeout=20)
            elif job.state == "cancelled":
                self.notify(f"run {job.number} cancelled; nothing was stored", severity="warning")
        self.jobs_version += 1

    def action_cancel_patch(self) -> None:
        """Cancel the newest running job."""
        for job in reversed(self.jobs):
            if self.runner.cancel(job):
                self.notify(f"cancelling run {job.number}…", severity="warning")
                self.jobs_version += 1
                return
        self.notify("no patch run is running")

    def cancel_every_job(self) -> None:
        """Leaving the app stops its runs; nothing half-written is kept."""
        for job in self.jobs:
            self.runner.cancel(job)
