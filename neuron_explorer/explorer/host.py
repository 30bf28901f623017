"""`AppHost`, the base of the app's mixins (`ExplorerActions`, `JobManager`, `LabManager`): what they may assume of
the app they are mixed into.

To the type checker it is a `textual.app.App[None]`, so the mixins' calls of `notify`, `push_screen`,
`switch_mode` and the like are checked against Textual; at runtime it is a plain class on `object`, so the mixins
add only their methods to `ExplorerApp`'s MRO (which lists `App` itself, last) and none of them imports the app.
Each mixin declares, as class-level annotations, the app attributes it reads (`ExplorerApp` sets them); the one
every mixin reads, the Store, is declared here with `opened_store`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .state import Store

if TYPE_CHECKING:
    from textual.app import App

    _Base = App[None]
else:
    _Base = object


class AppHost(_Base):
    """The app as its mixins see it."""

    store: Store | None  # None while the default cache is being built

    @property
    def opened_store(self) -> Store:
        """The open Store. The mixins' methods run only once one is open: they are called from its screens and from
        the palette's commands, which exist only then."""
        if self.store is None:
            raise RuntimeError("no cache is open")
        return self.store
