"""`python -m neuron_explorer`: the command line (importing this module runs nothing)."""

import sys

from neuron_explorer.cli import main

if __name__ == "__main__":
    sys.exit(main())
