"""The reference reaction over the reference domain: run completions, posted to a webhook.

:class:`RunCompletions` (``run_completions``) reacts to ``Run.Completed`` and owes
each completion to the ``completions`` destination, in its public form (see
:func:`~safereplay.reactions.delivery.public_form`). Its destination is configured
by ``SAFEREPLAY_WEBHOOK_COMPLETIONS_URL`` and a secret
(:mod:`safereplay.reactions.settings`). Documented in ``docs/reactions.md``.
"""

from __future__ import annotations

from safereplay.domain.automation import Run
from safereplay.reactions.reaction import Reaction

__all__ = ["REFERENCE_REACTIONS", "RunCompletions"]


class RunCompletions(Reaction):
    """Every completed run, posted to ``completions`` (the event's public form)."""

    name = "run_completions"
    reacts_to = (Run.Completed,)


#: The reactions recovery knows by default (``SAFEREPLAY_REACTIONS``).
REFERENCE_REACTIONS: tuple[Reaction, ...] = (RunCompletions(destinations=("completions",)),)
