"""One module per screen of the explorer; each has its .tcss beside it."""
