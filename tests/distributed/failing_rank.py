"""`neuron-explorer` whose rank 1 fails in its second recorded batch, as a rank whose GPU fails would: the test
launches it under torchrun."""

import os
import sys

from neuron_explorer.cli import main
from neuron_explorer.engine.neurons import compute
from neuron_explorer.errors import UserError

recorded = compute.record_model


def record_then_fail(*args, sink, **kwargs):
    batches = []

    def failing_sink(start, *batch):
        batches.append(start)
        if os.environ.get("RANK") == "1" and len(batches) == 2:
            raise UserError("rank 1 lost its device")
        sink(start, *batch)

    return recorded(*args, sink=failing_sink, **kwargs)


compute.record_model = record_then_fail
sys.exit(main())
