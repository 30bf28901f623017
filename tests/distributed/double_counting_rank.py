"""`neuron-explorer` whose rank 1 adds its first recorded batch to its running totals twice, as a pooling bug
would: the published ā is then wrong while every per-prompt mean is right. The test launches it under torchrun."""

import os
import sys

from neuron_explorer.cli import main
from neuron_explorer.engine.neurons.recording import ActivationRecorder

end_batch = ActivationRecorder.end_batch


def end_batch_counted_twice(self):
    if os.environ.get("RANK") == "1" and self.n_positions == 0:
        for totals, sums in ((self.act_total, self._batch_act), (self.written_total, self._batch_written)):
            for total, batch in zip(totals, sums):
                total += batch.sum(0, dtype=total.dtype)
        self.n_positions += int(self._batch_count.sum())
    return end_batch(self)


ActivationRecorder.end_batch = end_batch_counted_twice
sys.exit(main())
